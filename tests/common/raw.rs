//! A client on one raw TCP connection, for tests that must choose the bytes on the wire (which
//! listener path serves a request, pipelining, framing).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{DEADLINE, TestApp};

/// A client on one raw connection, keeping what it has read.
pub struct Raw {
    pub socket: TcpStream,
    read: Vec<u8>,
}

impl Raw {
    /// A client on a socket the test connected itself (with its own buffer sizes, say).
    pub fn from_socket(socket: TcpStream) -> Raw {
        Raw {
            socket,
            read: Vec::new(),
        }
    }

    pub async fn connect(app: &TestApp) -> Raw {
        let addr = app.url("").trim_start_matches("http://").to_owned();
        Raw {
            socket: TcpStream::connect(addr).await.expect("connect"),
            read: Vec::new(),
        }
    }

    pub async fn send(&mut self, request: &str) {
        self.socket
            .write_all(request.as_bytes())
            .await
            .expect("write");
    }

    /// Reads until `needle` has arrived; returns everything up to and including it and keeps
    /// the rest.
    pub async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(at) = find(&self.read, needle.as_bytes()) {
                return self.split(at + needle.len());
            }
            self.read_more(deadline, needle).await;
        }
    }

    /// Reads exactly `n` bytes (beyond what earlier calls returned).
    pub async fn take(&mut self, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.read.len() < n {
            self.read_more(deadline, &format!("{n} bytes")).await;
        }
        self.split(n)
    }

    fn split(&mut self, at: usize) -> String {
        let rest = self.read.split_off(at);
        let got = std::mem::replace(&mut self.read, rest);
        String::from_utf8(got).expect("utf-8")
    }

    async fn read_more(&mut self, deadline: tokio::time::Instant, waiting_for: &str) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {waiting_for:?}; got {:?}",
                    String::from_utf8_lossy(&self.read)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "closed before {waiting_for:?}; got {:?}",
            String::from_utf8_lossy(&self.read)
        );
        self.read.extend_from_slice(&buf[..n]);
    }

    /// Reads one chunk of a chunked body: its size line, its bytes, its CRLF.
    pub async fn chunk(&mut self) -> String {
        let size_line = self.until("\r\n").await;
        let size = usize::from_str_radix(size_line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("a chunk size: {size_line:?}"));
        let chunk = self.take(size).await;
        assert_eq!(self.take(2).await, "\r\n", "after the chunk {chunk:?}");
        chunk
    }

    /// Reads to the end of the connection.
    pub async fn read_to_close(&mut self) -> String {
        tokio::time::timeout(DEADLINE, self.socket.read_to_end(&mut self.read))
            .await
            .expect("the server closes")
            .expect("read");
        String::from_utf8(std::mem::take(&mut self.read)).expect("utf-8")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
