//! A real SMTP server for tests (mailin-embedded on a thread), recording every message, and a
//! plain HTTP mock of an SMS provider.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use mailin_embedded::{Handler, Response, Server, response};

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

impl Mail {
    /// The parsed message.
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parsable message")
    }
}

/// Where the sink may hold its reply, to stop a client at a chosen point of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Nothing,
    /// Before answering DATA with 354: the client has not sent the message.
    Data,
    /// After the final `.`, with the message recorded, before answering 250.
    Commit,
}

/// The hold and how many connections wait in it.
#[derive(Default)]
struct Holds {
    state: Mutex<(Option<Hold>, usize)>,
    changed: Condvar,
}

impl Holds {
    fn wait_if(&self, stage: Hold) {
        let mut state = self.state.lock().unwrap();
        if state.0 != Some(stage) {
            return;
        }
        state.1 += 1;
        while state.0 == Some(stage) {
            state = self.changed.wait(state).unwrap();
        }
        state.1 -= 1;
    }
}

/// An SMTP server on 127.0.0.1 that accepts everything.
pub struct SmtpSink {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    holds: Arc<Holds>,
}

#[derive(Clone)]
struct Recorder {
    mails: Arc<Mutex<Vec<Mail>>>,
    holds: Arc<Holds>,
    current: Option<Mail>,
}

impl Handler for Recorder {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.holds.wait_if(Hold::Data);
        self.current = Some(Mail {
            from: from.to_owned(),
            to: to.to_vec(),
            data: Vec::new(),
        });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(mail) = &mut self.current {
            mail.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(mail) = self.current.take() {
            self.mails.lock().unwrap().push(mail);
        }
        self.holds.wait_if(Hold::Commit);
        response::OK
    }
}

impl SmtpSink {
    /// Starts on an ephemeral port.
    pub fn start() -> SmtpSink {
        SmtpSink::start_on(TcpListener::bind("127.0.0.1:0").expect("bind SMTP sink"))
    }

    /// Starts on an ephemeral port with `threads` connections served at once (pooled
    /// connections hold a thread each while they stay open).
    pub fn start_with_threads(threads: u32) -> SmtpSink {
        SmtpSink::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind SMTP sink"),
            threads,
        )
    }

    /// Starts on a listener the test bound (to start the server later on a known port).
    pub fn start_on(listener: TcpListener) -> SmtpSink {
        SmtpSink::serve(listener, 4)
    }

    fn serve(listener: TcpListener, threads: u32) -> SmtpSink {
        let addr = listener.local_addr().expect("sink addr");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let holds = Arc::new(Holds::default());
        let mut server = Server::new(Recorder {
            mails: mails.clone(),
            holds: holds.clone(),
            current: None,
        });
        server
            .with_name("sink.example.test")
            .with_num_threads(threads)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpSink { addr, mails, holds }
    }

    /// Holds every connection that reaches `stage` until the hold changes.
    pub fn hold(&self, stage: Hold) {
        let mut state = self.holds.state.lock().unwrap();
        state.0 = Some(stage);
        self.holds.changed.notify_all();
    }

    /// How many connections wait in the hold now.
    pub fn held(&self) -> usize {
        self.holds.state.lock().unwrap().1
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Message-ID → how many times it was received.
    pub fn by_message_id(&self) -> std::collections::HashMap<String, usize> {
        self.count_by(|mail| mail.message_id().unwrap_or_default().to_owned())
    }

    /// First recipient → how many emails it received.
    pub fn by_recipient(&self) -> std::collections::HashMap<String, usize> {
        self.count_by(|mail| {
            mail.to()
                .and_then(|to| to.first())
                .and_then(|address| address.address())
                .unwrap_or_default()
                .to_owned()
        })
    }

    fn count_by(
        &self,
        key: impl Fn(&mail_parser::Message<'_>) -> String,
    ) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for mail in self.mails() {
            *counts.entry(key(&mail.parsed())).or_insert(0) += 1;
        }
        counts
    }
}

/// One request the SMS mock received.
#[derive(Debug, Clone)]
pub struct Sms {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

/// An SMS provider answering every request with `status`.
pub struct SmsMock {
    pub url: String,
    received: Arc<Mutex<Vec<Sms>>>,
    status: Arc<Mutex<u16>>,
}

impl SmsMock {
    pub async fn start() -> SmsMock {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let router = Router::new()
            .route("/sms", post(sms))
            .with_state((received.clone(), status.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMS mock");
        let url = format!("http://{}/sms", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        SmsMock {
            url,
            received,
            status,
        }
    }

    pub fn answer(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }

    pub fn received(&self) -> Vec<Sms> {
        self.received.lock().unwrap().clone()
    }
}

type SmsState = (Arc<Mutex<Vec<Sms>>>, Arc<Mutex<u16>>);

async fn sms(
    State((received, status)): State<SmsState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    received.lock().unwrap().push(Sms { headers, body });
    StatusCode::from_u16(*status.lock().unwrap()).expect("status")
}
