//! Sends events to mailpush's Cyrus notify socket, exactly as Cyrus's `notifysocket` does: one
//! datagram per event.
//!
//! ```sh
//! cargo run --example send_event -- run/notify.sock tests/fixtures/cyrus/008-MessageNew.bin
//! cargo run --example send_event -- run/notify.sock my-event.json
//! ```
//!
//! A `.bin` file is a captured datagram and is sent as it is. Any other file is taken as one
//! RFC 5423 event in JSON and wrapped in the EVENT packet layout first
//! (`method\0EVENT\0\0\0\0` `0\0` `<json>\0`).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, files @ ..] = args.as_slice() else {
        eprintln!("usage: send_event <socket> <file>...");
        return ExitCode::from(64);
    };
    if files.is_empty() {
        eprintln!("usage: send_event <socket> <file>...");
        return ExitCode::from(64);
    }
    match send_all(Path::new(socket), files) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("send_event: {err}");
            ExitCode::FAILURE
        }
    }
}

fn send_all(socket: &Path, files: &[String]) -> Result<(), String> {
    let sender = UnixDatagram::unbound().map_err(|err| format!("cannot create a socket: {err}"))?;
    // Like Cyrus, block while mailpush's queue is full, but never forever.
    sender
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| err.to_string())?;
    for file in files {
        let bytes = std::fs::read(file).map_err(|err| format!("cannot read {file}: {err}"))?;
        let datagram = if file.ends_with(".bin") {
            bytes
        } else {
            wrap_event(&bytes)
        };
        sender
            .send_to(&datagram, socket)
            .map_err(|err| format!("cannot send {file} to {}: {err}", socket.display()))?;
        println!("sent {file} ({} bytes)", datagram.len());
    }
    Ok(())
}

/// Wraps one JSON event in the Cyrus EVENT datagram layout.
fn wrap_event(json: &[u8]) -> Vec<u8> {
    let json = json.trim_ascii();
    let mut datagram = b"mailpush\0EVENT\0\0\0\0".to_vec();
    datagram.extend_from_slice(b"0\0");
    datagram.extend_from_slice(json);
    datagram.push(0);
    datagram
}
