//! Where an idle EventSource stream's memory goes, site by site.
//!
//! The idle scenario of the shared bench gives one figure (RSS per connection). This gives its
//! parts: mailpush runs in this process on a single-threaded runtime (as on one pinned core),
//! N streams of N distinct users are opened from plain sockets on another thread, and the
//! process then exits with them open, so that a heap profiler's list of blocks still live at
//! exit is what the streams hold, each with the code that made it. It runs on the system
//! allocator, which heap profilers see (the binary's mimalloc would hide the blocks from them);
//! block sizes are the same, and mimalloc serves each from its size class (a multiple of 8 up
//! to 64 bytes, then four classes per doubling: 80, 96, 112, 128, 160, 192, 224, 256, 320...).
//!
//! ```sh
//! ulimit -n 20000
//! cargo build --release --example stream_footprint
//! heaptrack target/release/examples/stream_footprint 5000
//! heaptrack_print --print-leaks 1 --print-peaks 0 --print-allocators 0 \
//!   --print-temporary 0 heaptrack.stream_footprint.*.zst | less
//! ```
//!
//! Default 5,000 streams (each takes two files in this process: client and server side), after
//! 500 that warm up the hub's tables. It prints RSS per stream between the two, on glibc's
//! allocator.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

use anyhow::Context;
use mailpush::app::{self, Listeners};
use mailpush::auth::TokenKeys;
use mailpush::config::Config;

/// Opens an EventSource stream and reads until its first chunk (the `retry:` hint) arrived:
/// the server has written its head and first frame, so the stream is waiting, idle.
fn open_stream(addr: std::net::SocketAddr, request: &[u8], buf: &mut [u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket.write_all(request).expect("write the request");
    let mut got = 0;
    while !buf[..got].windows(6).any(|w| w == b"retry:") {
        let n = socket.read(&mut buf[got..]).expect("read the head");
        assert!(
            n > 0,
            "the server closed a stream: {:?}",
            String::from_utf8_lossy(&buf[..got])
        );
        got += n;
    }
    socket
}

fn main() -> anyhow::Result<()> {
    let streams: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("STREAMS must be a number")?
        .unwrap_or(5000);
    let dir = std::env::temp_dir().join(format!("mailpush-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let env = [
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_HTTP__MAX_CONNECTIONS",
            (streams + 1000).to_string(),
        ),
        ("MAILPUSH_CONNECTIONS__MAX", (streams + 1000).to_string()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            dir.join("notify.sock").display().to_string(),
        ),
        (
            "MAILPUSH_AUTH__SECRET",
            "footprint-secret-footprint-secret".to_owned(),
        ),
    ]
    .map(|(key, value)| (key.to_owned(), value));
    let config = Config::load(None, env).context("configuration")?;
    let keys = TokenKeys::load(&config.auth, &config.storage.data_dir)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listeners = runtime.block_on(Listeners::bind(&config))?;
    let addr = listeners.http_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(app::run(config, listeners, std::future::pending::<()>()))
    });

    // Everything the client side keeps is made before the first snapshot.
    let warmup = 500.min(streams);
    let requests: Vec<Vec<u8>> = (0..warmup + streams)
        .map(|n| {
            let token = keys.mint(&format!("user{n:07}@example.com"), 3600, false)?;
            Ok(format!(
                "GET /events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .into_bytes())
        })
        .collect::<anyhow::Result<_>>()?;
    let mut sockets = Vec::with_capacity(warmup + streams);
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "mailpush did not listen");
        std::thread::yield_now();
    }
    // The first streams grow the hub's tables and the runtime's slabs to a working size.
    for request in &requests[..warmup] {
        sockets.push(open_stream(addr, request, &mut buf));
    }
    let before = settled_rss();
    let started = Instant::now();
    for request in &requests[warmup..] {
        sockets.push(open_stream(addr, request, &mut buf));
    }
    let opened = started.elapsed();
    let after = settled_rss();
    println!(
        "{streams} idle streams of as many users (after {warmup} to warm up), opened in {:.1} s",
        opened.as_secs_f64()
    );
    println!(
        "RSS {before} -> {after} kB: {:.0} B a stream (glibc's allocator)",
        (after as f64 - before as f64) * 1024.0 / streams as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Exit with every stream open: what a heap profiler finds live now is theirs.
    std::process::exit(0)
}

/// RSS once it stopped moving (the last streams' first writes done), within 10 s.
fn settled_rss() -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = common::rss_kb(std::process::id());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = common::rss_kb(std::process::id());
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
