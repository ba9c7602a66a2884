//! Local HTTP/2 mock servers for APNs and FCM, over TLS with a CA generated at test time, as the
//! real services speak. They check every header, verify the provider JWT and the OAuth2 grant,
//! record each request, and answer as scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What a mock answers: a status and a JSON body, or nothing at all (a hung provider).
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16, Value),
    /// Like `Status`, with a `Retry-After` header in seconds.
    RetryAfter(u16, Value, u64),
    Never,
}

/// One request a mock received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The device token from the path (APNs) or the message (FCM).
    pub token: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The credential the request carried (APNs provider JWT, FCM access token).
    pub credential: String,
    pub at: Instant,
}

/// A mock's shared state: its script, what it received, and what it found wrong.
#[derive(Default)]
pub struct Recorder {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    /// Header or credential checks that failed; a test asserts this stays empty.
    pub violations: Mutex<Vec<String>>,
    grants: Mutex<u32>,
}

impl Recorder {
    /// Queues answers for the next requests; after them every request gets 200.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// OAuth2 grants answered (FCM).
    pub fn grants(&self) -> u32 {
        *self.grants.lock().unwrap()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn next_answer(&self) -> Answer {
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Status(200, Value::Null))
    }

    async fn answer(&self, received: Received) -> Response {
        self.received.lock().unwrap().push(received);
        match self.next_answer() {
            Answer::Status(status, body) => reply(status, &body, None),
            Answer::RetryAfter(status, body, seconds) => reply(status, &body, Some(seconds)),
            Answer::Never => std::future::pending().await,
        }
    }
}

fn reply(status: u16, body: &Value, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    let mut response = if body.is_null() {
        status.into_response()
    } else {
        (status, axum::Json(body.clone())).into_response()
    };
    response.headers_mut().insert(
        "apns-id",
        "00000000-0000-4000-8000-000000000000"
            .parse()
            .expect("header"),
    );
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().expect("header"));
    }
    response
}

/// A certificate for 127.0.0.1 and localhost, signed by a CA made at test time, for a server;
/// the CA is in `ca_file`, for the client to trust.
pub struct LocalhostCertificate {
    pub ca_file: PathBuf,
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// Makes a CA (written in `dir`) and a certificate it signs for 127.0.0.1 and localhost.
pub fn localhost_certificate(dir: &Path) -> LocalhostCertificate {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailpush test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("leaf params");
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let ca_file = dir.join(format!("ca-{}.pem", rand_suffix()));
    std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
    LocalhostCertificate {
        ca_file,
        cert: leaf_cert,
        key: leaf_key,
    }
}

/// Serves `router` over TLS with ALPN h2 on 127.0.0.1; returns the base URL and the CA file.
pub async fn serve_tls(router: Router, dir: &Path) -> (String, PathBuf) {
    let LocalhostCertificate {
        ca_file,
        cert: leaf_cert,
        key: leaf_key,
    } = localhost_certificate(dir);
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("TLS config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    let addr: SocketAddr = listener.local_addr().expect("mock addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}"), ca_file)
}

fn rand_suffix() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

/// An APNs mock for one topic, with the key it trusts.
pub struct ApnsMock {
    pub url: String,
    pub ca_file: PathBuf,
    /// The `.p8` signing key mailpush is configured with.
    pub key_file: PathBuf,
    pub recorder: Arc<Recorder>,
}

pub const APNS_KEY_ID: &str = "KEYID12345";
pub const APNS_TEAM_ID: &str = "TEAMID6789";
pub const APNS_TOPIC: &str = "com.example.mail";

struct ApnsState {
    recorder: Arc<Recorder>,
    public_key: DecodingKey,
}

impl ApnsMock {
    pub async fn start(dir: &Path) -> ApnsMock {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("APNs key");
        let key_file = dir.join(format!("apns-{}.p8", rand_suffix()));
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        let public_key =
            DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).expect("public key");
        let recorder = Arc::new(Recorder::default());
        let state = Arc::new(ApnsState {
            recorder: recorder.clone(),
            public_key,
        });
        let router = Router::new()
            .route("/3/device/{token}", post(apns_push))
            .with_state(state);
        let (url, ca_file) = serve_tls(router, dir).await;
        ApnsMock {
            url,
            ca_file,
            key_file,
            recorder,
        }
    }

    /// The `MAILPUSH_PUSH__APNS__<NAME>__*` settings that point mailpush here.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let key = |k: &str| format!("MAILPUSH_PUSH__APNS__{name}__{k}");
        vec![
            (key("BASE_URL"), self.url.clone()),
            (key("SANDBOX_BASE_URL"), self.url.clone()),
            (key("KEY_FILE"), self.key_file.display().to_string()),
            (key("KEY_ID"), APNS_KEY_ID.to_owned()),
            (key("TEAM_ID"), APNS_TEAM_ID.to_owned()),
            (key("TOPIC"), APNS_TOPIC.to_owned()),
            (key("CA_FILE"), self.ca_file.display().to_string()),
        ]
    }
}

async fn apns_push(
    State(state): State<Arc<ApnsState>>,
    UrlPath(token): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut problems = Vec::new();
    let authorization = header("authorization");
    let jwt = authorization
        .strip_prefix("bearer ")
        .unwrap_or("")
        .to_owned();
    match jsonwebtoken::decode_header(&jwt) {
        Ok(jwt_header)
            if jwt_header.alg == Algorithm::ES256
                && jwt_header.kid.as_deref() == Some(APNS_KEY_ID) => {}
        other => problems.push(format!("provider token header: {other:?}")),
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    match jsonwebtoken::decode::<Value>(&jwt, &state.public_key, &validation) {
        Ok(data) => {
            if data.claims["iss"] != APNS_TEAM_ID {
                problems.push(format!("iss: {}", data.claims["iss"]));
            }
            let iat = data.claims["iat"].as_u64().unwrap_or(0);
            if iat.abs_diff(mailpush::auth::unix_now()) > 120 {
                problems.push(format!("iat: {iat}"));
            }
        }
        Err(err) => problems.push(format!("provider token signature: {err}")),
    }
    if header("apns-topic") != APNS_TOPIC {
        problems.push(format!("apns-topic: {}", header("apns-topic")));
    }
    if header("apns-push-type") != "alert" {
        problems.push(format!("apns-push-type: {}", header("apns-push-type")));
    }
    if !["10", "5"].contains(&header("apns-priority").as_str()) {
        problems.push(format!("apns-priority: {}", header("apns-priority")));
    }
    if header("apns-expiration")
        .parse::<u64>()
        .map_or(true, |at| at <= mailpush::auth::unix_now())
    {
        problems.push(format!("apns-expiration: {}", header("apns-expiration")));
    }
    let id = header("apns-id");
    if id.len() != 36 || id.split('-').map(str::len).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        problems.push(format!("apns-id: {id}"));
    }
    if !header("content-type").starts_with("application/json") {
        problems.push(format!("content-type: {}", header("content-type")));
    }
    if body.len() > 4096 {
        problems.push(format!("payload of {} bytes", body.len()));
    }
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        problems.push(format!("device token: {token}"));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|err| {
        problems.push(format!("body is not JSON: {err}"));
        Value::Null
    });
    for problem in problems {
        state.recorder.violation(problem);
    }
    let received = Received {
        token,
        headers,
        body,
        credential: jwt,
        at: Instant::now(),
    };
    state.recorder.answer(received).await
}

/// An FCM mock: the OAuth2 token endpoint and `messages:send` for one project.
pub struct FcmMock {
    pub url: String,
    pub ca_file: PathBuf,
    pub service_account_file: PathBuf,
    pub recorder: Arc<Recorder>,
}

pub const FCM_PROJECT: &str = "mailpush-test";
pub const FCM_CLIENT_EMAIL: &str = "pusher@mailpush-test.iam.gserviceaccount.com";

struct FcmState {
    recorder: Arc<Recorder>,
    public_key: DecodingKey,
    token_uri: Mutex<String>,
    issued: Mutex<Vec<String>>,
}

impl FcmMock {
    pub async fn start(dir: &Path) -> FcmMock {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let public_key =
            DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).expect("public key");
        let recorder = Arc::new(Recorder::default());
        let state = Arc::new(FcmState {
            recorder: recorder.clone(),
            public_key,
            token_uri: Mutex::new(String::new()),
            issued: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/token", post(fcm_token))
            .route("/v1/projects/{project}/messages:send", post(fcm_send))
            .with_state(state.clone());
        let (url, ca_file) = serve_tls(router, dir).await;
        let token_uri = format!("{url}/token");
        *state.token_uri.lock().unwrap() = token_uri.clone();
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "key-id-1",
            "private_key": key.serialize_pem(),
            "client_email": FCM_CLIENT_EMAIL,
            "token_uri": token_uri,
        });
        let service_account_file = dir.join(format!("service-account-{}.json", rand_suffix()));
        std::fs::write(&service_account_file, account.to_string()).expect("write service account");
        FcmMock {
            url,
            ca_file,
            service_account_file,
            recorder,
        }
    }

    /// The `MAILPUSH_PUSH__FCM__<NAME>__*` settings that point mailpush here.
    pub fn env(&self, name: &str, app: &str) -> Vec<(String, String)> {
        let key = |k: &str| format!("MAILPUSH_PUSH__FCM__{name}__{k}");
        vec![
            (key("BASE_URL"), self.url.clone()),
            (
                key("SERVICE_ACCOUNT_FILE"),
                self.service_account_file.display().to_string(),
            ),
            (key("APP"), app.to_owned()),
            (key("CA_FILE"), self.ca_file.display().to_string()),
        ]
    }
}

async fn fcm_token(
    State(state): State<Arc<FcmState>>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> Response {
    let mut problems = Vec::new();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        problems.push(format!("grant_type: {:?}", form.get("grant_type")));
    }
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    match jsonwebtoken::decode_header(&assertion) {
        Ok(header)
            if header.alg == Algorithm::RS256 && header.kid.as_deref() == Some("key-id-1") => {}
        other => problems.push(format!("assertion header: {other:?}")),
    }
    let token_uri = state.token_uri.lock().unwrap().clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[FCM_CLIENT_EMAIL]);
    match jsonwebtoken::decode::<Value>(&assertion, &state.public_key, &validation) {
        Ok(data) => {
            if data.claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
                problems.push(format!("scope: {}", data.claims["scope"]));
            }
            let lifetime = data.claims["exp"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(data.claims["iat"].as_u64().unwrap_or(0));
            if lifetime > 3600 {
                problems.push(format!("assertion lifetime {lifetime}"));
            }
        }
        Err(err) => problems.push(format!("assertion: {err}")),
    }
    let refused = !problems.is_empty();
    for problem in problems {
        state.recorder.violation(problem);
    }
    if refused {
        return reply(400, &serde_json::json!({"error": "invalid_grant"}), None);
    }
    *state.recorder.grants.lock().unwrap() += 1;
    let access_token = format!("ya29.mock-{}", rand_suffix());
    state.issued.lock().unwrap().push(access_token.clone());
    reply(
        200,
        &serde_json::json!({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}),
        None,
    )
}

async fn fcm_send(
    State(state): State<Arc<FcmState>>,
    UrlPath(project): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let credential = header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("")
        .to_owned();
    if project != FCM_PROJECT {
        state.recorder.violation(format!("project: {project}"));
    }
    if !state.issued.lock().unwrap().contains(&credential) {
        state.recorder.violation(format!(
            "access token not issued by the token endpoint: {credential}"
        ));
    }
    if !header("content-type").starts_with("application/json") {
        state
            .recorder
            .violation(format!("content-type: {}", header("content-type")));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["message"]["token"].as_str().unwrap_or("").to_owned();
    let received = Received {
        token,
        headers,
        body,
        credential,
        at: Instant::now(),
    };
    state.recorder.answer(received).await
}
