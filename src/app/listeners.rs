//! The sockets mailpush serves, bound before [`super::run`] starts: `main` binds the configured
//! addresses, tests bind ephemeral ones, and a bind that fails stops the start with the key
//! that named it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::{TcpListener, UnixDatagram, UnixListener};

use crate::config::Config;
use crate::ingest::{self, socket::SocketAccess};
use crate::listen;

/// Every listener mailpush serves, bound before [`super::run`] starts.
pub struct Listeners {
    pub http: TcpListener,
    /// The Cyrus datagram sockets, with their paths (removed at shutdown).
    pub cyrus: Vec<(PathBuf, UnixDatagram)>,
    pub dlist: Option<(PathBuf, UnixListener)>,
    pub ndjson: Option<TcpListener>,
}

impl Listeners {
    /// Binds every configured address and socket file.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let access = SocketAccess {
            mode: config.socket_mode(),
            group: config.ingest.cyrus_socket_group.clone(),
        };
        let backlog = config.connections.backlog;
        let http = listen::bind_tcp(config.http.listen, backlog)
            .with_context(|| format!("cannot listen on http.listen {}", config.http.listen))?;
        let mut cyrus = Vec::new();
        for path in &config.ingest.cyrus_socket {
            cyrus.push((path.clone(), ingest::cyrus::bind(path, &access)?));
        }
        let dlist = match &config.ingest.cyrus_dlist_socket {
            Some(path) => Some((path.clone(), ingest::dlist::bind(path, &access, backlog)?)),
            None => None,
        };
        let ndjson = match config.ingest.ndjson_listen {
            Some(addr) => Some(
                listen::bind_tcp(addr, backlog)
                    .with_context(|| format!("cannot listen on ingest.ndjson_listen {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            http,
            cyrus,
            dlist,
            ndjson,
        })
    }

    /// The bound HTTP address (the real port when the config said port 0).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound NDJSON address, when that listener is on.
    pub fn ndjson_addr(&self) -> Option<SocketAddr> {
        self.ndjson
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }
}
