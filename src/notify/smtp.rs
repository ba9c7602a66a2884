//! SMTP delivery: lettre's protocol client over connections this module opens and pools.
//!
//! lettre's pooled transport sends a message as one opaque call, so nothing can run between
//! the last byte of the message and the `.` that commits it at the relay. That moment is the
//! one a crash-safe queue needs: [`SmtpRelay::send`] has the worker's journal record the
//! delivery right before the final `.` is written (see [`super::journal`]). The record may be
//! a database write, so it is a future ([`Commit`]): a gate in front of the socket's writes,
//! armed once lettre asks for the part after the message, holds the `.` back until the
//! record's request has left the process, and its answer is awaited after the relay's. Owning the connections also lets every socket be opened with
//! `TCP_NODELAY`: the message and the final `.` are two small writes, and with Nagle's
//! algorithm the second waits for the relay's delayed ACK, 40 ms per email.
//!
//! The URL forms are lettre's: `smtp://host:port` (plain), `smtp://host?tls=required` or
//! `?tls=opportunistic` (STARTTLS), `smtps://host` (implicit TLS, port 465 by default),
//! `user:password@` for AUTH PLAIN/LOGIN, and a path naming the EHLO host.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::SendError;

/// Idle connections older than this are closed rather than reused (relays drop idle clients
/// after a minute or so).
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    /// STARTTLS; `required` refuses a relay that does not offer it.
    StartTls {
        required: bool,
    },
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// The relay of `notify.smtp.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<(String, String)>,
    hello: Option<String>,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// A connection, and the gate in front of its socket's writes.
struct Connection {
    smtp: AsyncSmtpConnection,
    gate: Arc<Gate>,
}

/// The journal's record of a delivery, which must reach the journal before the `.` leaves.
pub struct Commit {
    /// The record; it completes once the journal has it.
    pub record: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set by the record once its request has left the process (a database query written
    /// to its socket): from then on a crash cannot keep it from the journal, so the `.` may
    /// go at once and the journal's answer be awaited after the relay's. A record that
    /// never sets it holds the `.` until it completes.
    pub sent: Arc<AtomicBool>,
}

/// Holds a socket's writes while a [`Commit`] is on its way to the journal.
#[derive(Default)]
struct Gate {
    /// A std mutex: held while the record is polled, by the one task that writes.
    armed: Mutex<Option<Commit>>,
}

impl Commit {
    /// A record that is made at once (or not at all).
    pub fn done() -> Commit {
        Commit {
            record: Box::pin(std::future::ready(())),
            sent: Arc::default(),
        }
    }
}

impl Gate {
    fn arm(&self, commit: Commit) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(commit);
    }

    /// What is left of the record once the `.` went: awaited after the relay answers.
    fn take(&self) -> Option<Commit> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Ready once the record is done, or its request has left the process.
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(commit) = armed.as_mut() else {
            return Poll::Ready(());
        };
        if commit.sent.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match commit.record.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *armed = None;
                Poll::Ready(())
            }
            Poll::Pending if commit.sent.load(Ordering::Acquire) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A socket whose writes wait for its gate. It sits under any TLS (implicit or STARTTLS), so
/// it sees the `.` as the first write after the gate is armed, plain or encrypted.
#[derive(Debug)]
struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// A pool of SMTP connections to one relay.
pub struct SmtpRelay {
    target: Target,
    hello: ClientId,
    credentials: Option<Credentials>,
    tls: Option<tokio_rustls::TlsConnector>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    timeout: Duration,
}

impl SmtpRelay {
    /// Reads `notify.smtp.url`; `max_idle` connections are kept open between sends.
    pub fn new(url: &str, max_idle: usize, timeout: Duration) -> anyhow::Result<SmtpRelay> {
        let target = parse_url(url)?;
        let tls = match target.security {
            Security::Implicit => Some(tls_connector()?),
            Security::Plain | Security::StartTls { .. } => None,
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
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            timeout,
        })
    }

    /// Sends one message. `before_commit` runs once, right before the final `.` is written:
    /// after it the relay may hold the message even if no reply ever comes back.
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
        if let Err(err) = self.start(&mut connection.smtp, envelope, message).await {
            connection.smtp.abort().await;
            if !(reused && is_connection_lost(&err)) {
                return Err(classify(&err));
            }
            tracing::debug!(error = %err, "pooled SMTP connection was closed; reconnecting");
            connection = self.connect().await?;
            if let Err(err) = self.start(&mut connection.smtp, envelope, message).await {
                connection.smtp.abort().await;
                return Err(classify(&err));
            }
        }
        let mut before_commit = Some(before_commit);
        let gate = connection.gate.clone();
        let parts = std::iter::once(message).chain(std::iter::from_fn(move || {
            // Asked for a part after the last one: lettre writes the final `.` next, and the
            // gate holds it until the record is on its way.
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

    /// MAIL FROM, RCPT TO and DATA: everything before the message itself.
    async fn start(
        &self,
        connection: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<(), lettre::transport::smtp::Error> {
        let info = connection.server_info();
        let mut parameters = Vec::new();
        let ascii = |address: &lettre::Address| AsRef::<str>::as_ref(address).is_ascii();
        let non_ascii_addresses =
            envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a));
        if non_ascii_addresses && info.supports_feature(Extension::SmtpUtfEight) {
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !message.is_ascii() && info.supports_feature(Extension::EightBitMime) {
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        connection
            .command(Mail::new(envelope.from().cloned(), parameters))
            .await?;
        for recipient in envelope.to() {
            connection
                .command(Rcpt::new(recipient.clone(), Vec::new()))
                .await?;
        }
        connection.command(Data).await?;
        Ok(())
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

    /// Opens a connection: TCP with `TCP_NODELAY`, TLS or STARTTLS as configured, EHLO, AUTH.
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
            if let Security::StartTls { required } = target.security {
                if connection.can_starttls() {
                    let parameters = TlsParameters::new(target.host.clone())
                        .map_err(|err| format!("TLS: {err}"))?;
                    connection
                        .starttls(parameters, &self.hello)
                        .await
                        .map_err(|err| format!("STARTTLS: {err}"))?;
                } else if required {
                    return Err("the relay does not offer STARTTLS".to_owned());
                }
            }
            if let Some(credentials) = &self.credentials {
                connection
                    .auth(DEFAULT_MECHANISMS, credentials)
                    .await
                    .map_err(|err| format!("AUTH: {err}"))?;
            }
            Ok(connection)
        })
        .await;
        match connected {
            Ok(Ok(smtp)) => Ok(Connection { smtp, gate }),
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

/// An `smtps://` stream in the form lettre's connection takes.
#[derive(Debug)]
struct TlsOverTcp(tokio_rustls::client::TlsStream<Gated<TcpStream>>);

impl AsyncTokioStream for TlsOverTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.inner.peer_addr()
    }
}

impl AsyncTokioStream for Gated<TcpStream> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.poll_open(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for TlsOverTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsOverTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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

/// TLS for `smtps://`, with the platform's roots, as lettre itself verifies.
fn tls_connector() -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_platform_verifier()
        .context("the platform's certificate verifier")?
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn parse_url(text: &str) -> anyhow::Result<Target> {
    let url = reqwest::Url::parse(text).context("not a URL")?;
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .context("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let (security, default_port) = match (url.scheme(), tls.as_deref()) {
        ("smtp", None) => (Security::Plain, 25),
        ("smtp", Some("required")) => (Security::StartTls { required: true }, 587),
        ("smtp", Some("opportunistic")) => (Security::StartTls { required: false }, 587),
        ("smtps", _) => (Security::Implicit, 465),
        (scheme, tls) => bail!("unknown scheme {scheme:?} or tls={tls:?}"),
    };
    let decode = |part: &str| -> anyhow::Result<String> {
        percent_decode_str(part)
            .decode_utf8()
            .map(Cow::into_owned)
            .context("credentials are not UTF-8")
    };
    let credentials = match url.password() {
        Some(password) => Some((decode(url.username())?, decode(password)?)),
        None => None,
    };
    let path = url.path().trim_matches('/');
    Ok(Target {
        host,
        port: url.port().unwrap_or(default_port),
        security,
        credentials,
        hello: (!path.is_empty()).then(|| path.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_holds_the_commit_until_the_record_is_on_its_way() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let gate = Arc::new(Gate::default());
        let mut socket = Gated {
            inner: near,
            gate: gate.clone(),
        };
        socket.write_all(b"body").await.unwrap();
        // A record whose request leaves when `leave` fires and whose answer comes on `answer`.
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let sent = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (flag, finished) = (sent.clone(), done.clone());
        gate.arm(Commit {
            record: Box::pin(async move {
                let _ = left.await;
                flag.store(true, Ordering::Release);
                let _ = answered.await;
                finished.store(true, Ordering::Release);
            }),
            sent,
        });
        let mut commit = Box::pin(socket.write_all(b"\r\n.\r\n"));
        assert!(
            poll_once(&mut commit).await.is_pending(),
            "held while the record has not left"
        );
        assert!(poll_once(&mut commit).await.is_pending());
        leave.send(()).unwrap();
        assert!(
            matches!(poll_once(&mut commit).await, Poll::Ready(Ok(()))),
            "the `.` goes once the record is on its way, before its answer"
        );
        drop(commit);
        let mut written = vec![0; 9];
        far.read_exact(&mut written).await.unwrap();
        assert_eq!(written, b"body\r\n.\r\n");
        // What is left of the record is awaited after the relay's answer.
        let rest = gate.take().expect("the record's answer is still to come");
        assert!(!done.load(Ordering::Acquire));
        answer.send(()).unwrap();
        rest.record.await;
        assert!(done.load(Ordering::Acquire));
        // A record made at once (the file journal) never holds a write.
        gate.arm(Commit::done());
        socket.write_all(b"next").await.unwrap();
        assert!(gate.take().is_none());
    }

    /// Polls `future` once.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
    }

    #[test]
    fn urls_read_as_lettre_reads_them() {
        let plain = parse_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.security),
            ("127.0.0.1", 2525, Security::Plain)
        );
        assert_eq!(plain.credentials, None);
        assert_eq!(parse_url("smtp://relay.example.com").unwrap().port, 25);

        let starttls =
            parse_url("smtp://me%40x.test:p%3Ass@relay.example.com?tls=required").unwrap();
        assert_eq!(starttls.port, 587);
        assert_eq!(starttls.security, Security::StartTls { required: true });
        assert_eq!(
            starttls.credentials,
            Some(("me@x.test".to_owned(), "p:ss".to_owned()))
        );
        assert_eq!(
            parse_url("smtp://relay.example.com?tls=opportunistic")
                .unwrap()
                .security,
            Security::StartTls { required: false }
        );

        let implicit = parse_url("smtps://relay.example.com/client.example.com").unwrap();
        assert_eq!(
            (implicit.port, implicit.security),
            (465, Security::Implicit)
        );
        assert_eq!(implicit.hello.as_deref(), Some("client.example.com"));
        assert_eq!(parse_url("smtp://[::1]:25").unwrap().host, "::1");

        for bad in [
            "http://relay",
            "smtp://relay?tls=sometimes",
            "relay:25",
            "smtp://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
