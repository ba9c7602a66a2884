//! SMTP delivery: lettre's protocol client over connections this module opens and pools.
//!
//! lettre's pooled transport sends a message as one opaque call, so nothing can run between
//! the last byte of the message and the `.` that commits it at the relay. That moment is the
//! one a crash-safe queue needs: [`SmtpRelay::send`] has the worker's journal record the
//! delivery as the final `.` is written (see [`super::journal`]). The record may be a
//! database write, so it is a future ([`Commit`]): a gate on the socket (`gate.rs`), armed
//! once lettre asks for the part after the message, writes the `.` into the corked socket,
//! starts the record, and sends the `.` once the record's request has left the process; the
//! record's answer is awaited after the relay's. Owning the connections also lets every socket be opened with `TCP_NODELAY`: the
//! message and the final `.` are two small writes, and with Nagle's algorithm the second
//! waits for the relay's delayed ACK, 40 ms per email; and it lets a transaction's commands
//! go as one write to a relay that offers PIPELINING (`transaction.rs`).

mod gate;
mod transaction;
mod url;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use super::SendError;
pub use gate::Commit;
use gate::{Gate, Gated, TlsOverTcp};
use transaction::Refused;
use url::{Security, Target, parse_url};

/// Idle connections older than this are closed rather than reused (relays drop idle clients
/// after a minute or so).
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

struct Idle {
    connection: Connection,
    since: Instant,
}

/// A connection, the gate in front of its socket's writes, and whether its relay takes a
/// transaction's commands as one group.
struct Connection {
    smtp: AsyncSmtpConnection,
    gate: Arc<Gate>,
    pipelining: bool,
}

impl Connection {
    /// MAIL FROM, RCPT TO and DATA: everything before the message itself.
    async fn start(&mut self, envelope: &Envelope, message: &[u8]) -> Result<(), Refused> {
        transaction::start(&mut self.smtp, self.pipelining, envelope, message).await
    }

    /// Closes a connection that failed, with a QUIT when the relay would read it as one.
    async fn close(mut self, quit: bool) {
        if quit {
            self.smtp.abort().await;
        }
    }
}

/// A pool of SMTP connections to one relay.
pub struct SmtpRelay {
    target: Target,
    hello: ClientId,
    credentials: Option<Credentials>,
    /// For `smtps://`.
    tls: Option<tokio_rustls::TlsConnector>,
    /// For STARTTLS (lettre's upgrade of the connection).
    starttls: Option<TlsParameters>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    timeout: Duration,
}

impl SmtpRelay {
    /// Reads `notify.smtp.url`, and `notify.smtp.ca_file` (a CA trusted besides the
    /// platform's); `max_idle` connections are kept open between sends.
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        max_idle: usize,
        timeout: Duration,
    ) -> anyhow::Result<SmtpRelay> {
        let target = parse_url(url).context("notify.smtp.url is not an SMTP URL")?;
        let extra_roots = match ca_file {
            Some(path) => read_roots(path)?,
            None => Vec::new(),
        };
        let (tls, starttls) = match target.security {
            Security::Implicit => (Some(tls_connector(extra_roots)?), None),
            Security::StartTls { .. } => {
                let mut parameters = TlsParameters::builder(target.host.clone());
                for root in extra_roots {
                    parameters = parameters.add_root_certificate(
                        Certificate::from_der(root.to_vec()).context("notify.smtp.ca_file")?,
                    );
                }
                let parameters = parameters.build_rustls().context("TLS for STARTTLS")?;
                (None, Some(parameters))
            }
            Security::Plain => (None, None),
        };
        Ok(SmtpRelay {
            hello: target
                .hello
                .clone()
                .map_or_else(ClientId::default, ClientId::Domain),
            credentials: target
                .credentials
                .clone()
                .map(|(user, password)| Credentials::new(user, password)),
            target,
            tls,
            starttls,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            timeout,
        })
    }

    /// Sends one message. `before_commit` runs once, as the final `.` is written: after it the
    /// relay may hold the message even if no reply ever comes back. It is not run if the `.`
    /// was never written.
    ///
    /// A pooled connection the relay has closed meanwhile is replaced once, transparently;
    /// nothing of the message had been sent on it.
    pub async fn send(
        &self,
        envelope: &Envelope,
        message: &[u8],
        before_commit: Commit,
    ) -> Result<(), SendError> {
        let (mut connection, reused) = match self.checkout() {
            Some(connection) => (connection, true),
            None => (self.connect().await?, false),
        };
        if let Err(refused) = connection.start(envelope, message).await {
            let lost = reused && is_connection_lost(&refused.error);
            connection.close(refused.quit).await;
            if !lost {
                return Err(classify(&refused.error));
            }
            tracing::debug!(error = %refused.error, "pooled SMTP connection was closed; reconnecting");
            connection = self.connect().await?;
            if let Err(refused) = connection.start(envelope, message).await {
                connection.close(refused.quit).await;
                return Err(classify(&refused.error));
            }
        }
        let mut before_commit = Some(before_commit);
        let gate = connection.gate.clone();
        let parts = std::iter::once(message).chain(std::iter::from_fn(move || {
            // Asked for a part after the last one: lettre writes the final `.` next, and the
            // gate sends it with the record.
            if let Some(commit) = before_commit.take() {
                gate.arm(commit);
            }
            None
        }));
        let sent = connection.smtp.message_iter(parts).await;
        if let Some(rest) = connection.gate.take() {
            rest.record.await;
        }
        match sent {
            Ok(_) => {
                self.checkin(connection);
                Ok(())
            }
            Err(err) => {
                connection.smtp.abort().await;
                Err(classify(&err))
            }
        }
    }

    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < MAX_IDLE_AGE && !entry.connection.smtp.has_broken() {
                return Some(entry.connection);
            }
            // Too old: dropped without QUIT, which costs the relay nothing it cannot handle.
        }
        None
    }

    fn checkin(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection: TCP with `TCP_NODELAY`, TLS or STARTTLS as configured, EHLO (twice:
    /// the second reads PIPELINING), AUTH.
    async fn connect(&self) -> Result<Connection, SendError> {
        let target = &self.target;
        let gate = Arc::new(Gate::default());
        let connected = tokio::time::timeout(self.timeout, async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|err| format!("cannot connect: {err}"))?;
            tcp.set_nodelay(true)
                .map_err(|err| format!("TCP_NODELAY: {err}"))?;
            let tcp = Gated {
                inner: tcp,
                gate: gate.clone(),
            };
            let mut connection = match &self.tls {
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                        .map_err(|err| format!("TLS server name: {err}"))?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|err| format!("TLS: {err}"))?;
                    AsyncSmtpConnection::connect_with_transport(
                        Box::new(TlsOverTcp(stream)),
                        &self.hello,
                    )
                    .await
                }
                None => {
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await
                }
            }
            .map_err(|err| format!("greeting: {err}"))?;
            if let (Security::StartTls { required }, Some(parameters)) =
                (target.security, &self.starttls)
            {
                if connection.can_starttls() {
                    connection
                        .starttls(parameters.clone(), &self.hello)
                        .await
                        .map_err(|err| format!("STARTTLS: {err}"))?;
                } else if required {
                    return Err("the relay does not offer STARTTLS".to_owned());
                }
            }
            let pipelining = transaction::offers_pipelining(&mut connection, &self.hello)
                .await
                .map_err(|err| format!("EHLO: {err}"))?;
            if let Some(credentials) = &self.credentials {
                connection
                    .auth(DEFAULT_MECHANISMS, credentials)
                    .await
                    .map_err(|err| format!("AUTH: {err}"))?;
            }
            Ok((connection, pipelining))
        })
        .await;
        match connected {
            Ok(Ok((smtp, pipelining))) => {
                tracing::debug!(
                    relay = %format_args!("{}:{}", target.host, target.port),
                    pipelining,
                    "SMTP connection open"
                );
                Ok(Connection {
                    smtp,
                    gate,
                    pipelining,
                })
            }
            Ok(Err(reason)) => Err(SendError::Retry(format!(
                "SMTP {}:{}: {reason}",
                target.host, target.port
            ))),
            Err(_) => Err(SendError::Retry(format!(
                "SMTP {}:{}: no session within {:?}",
                target.host, target.port, self.timeout
            ))),
        }
    }
}

/// Permanent (5xx) replies are permanent; everything else may work later.
fn classify(err: &lettre::transport::smtp::Error) -> SendError {
    if err.is_permanent() {
        SendError::Permanent(format!("SMTP: {err}"))
    } else {
        SendError::Retry(format!("SMTP: {err}"))
    }
}

/// A reused connection that fails before any reply code: the relay closed it while idle.
fn is_connection_lost(err: &lettre::transport::smtp::Error) -> bool {
    err.status().is_none() && !err.is_client()
}

/// The certificates of `notify.smtp.ca_file` (PEM); one at least.
fn read_roots(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read notify.smtp.ca_file {}", path.display()))?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("notify.smtp.ca_file {} is not PEM", path.display()))?;
    if roots.is_empty() {
        anyhow::bail!(
            "notify.smtp.ca_file {} holds no certificate",
            path.display()
        );
    }
    Ok(roots)
}

/// TLS for `smtps://`, with the platform's roots and `extra_roots`, as lettre itself verifies
/// for STARTTLS.
fn tls_connector(
    extra_roots: Vec<CertificateDer<'static>>,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .context("the platform's certificate verifier")?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for url in [
            "smtps://relay.example.test",
            "smtp://relay.example.test?tls=required",
        ] {
            let error = |ca_file: &Path| {
                let relay = SmtpRelay::new(url, Some(ca_file), 1, Duration::from_secs(1));
                format!("{:#}", relay.err().expect("refused"))
            };
            let missing = error(&missing);
            assert!(
                missing.contains("cannot read notify.smtp.ca_file"),
                "{missing}"
            );
            let empty = error(&empty);
            assert!(empty.contains("holds no certificate"), "{empty}");
        }
    }
}
