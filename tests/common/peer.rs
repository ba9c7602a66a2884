//! Programs nobody here wrote, run beside mailpush for a test (a relay, a push service, a
//! browser driver, a mail server): each a child of the test, killed and reaped when the test
//! ends, passed or failed.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command};

/// A running peer; dropping it kills it.
pub struct Peer {
    child: Child,
    name: String,
}

impl Peer {
    /// Starts `command`; `name` says which peer when something fails.
    pub fn spawn(name: &str, command: &mut Command) -> Peer {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Peer {
            child,
            name: name.to_owned(),
        }
    }

    /// The lines of its standard output, which the command must have piped; taken once.
    pub fn stdout_lines(&mut self) -> Lines<BufReader<ChildStdout>> {
        let stdout = self
            .child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("{}: stdout is not piped, or was taken", self.name));
        BufReader::new(stdout).lines()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now, for a peer that cannot pick its own and say which: another
/// process may take it before the peer binds, and the peer's start then fails loudly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
