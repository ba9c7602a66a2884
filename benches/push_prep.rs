//! What a push costs before it leaves: Web Push's per-message encryption (an ECDH agreement
//! and AES-GCM, RFC 8291) and VAPID signing (an ES256 signature, made once per push service
//! and cached), and the coalescer's offer for a badge update. Run with
//! `cargo bench --bench push_prep`; criterion reports operations/s on one core.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailpush::push::PushJob;
use mailpush::push::coalesce::Coalescer;
use mailpush::push::webpush::{Vapid, ece};
use mailpush::route::PushKind;
use mailpush::store::{Device, Environment, Platform};

/// The allocator the binary runs with (src/main.rs), so the figure is the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A browser's key and auth secret (RFC 8291 Appendix A).
const UA_PUBLIC: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

/// A legacy payload of new mail, as `webpush::payload` writes it (about 250 bytes).
const PAYLOAD: &[u8] = br#"{"mailModSeq":1042,"calendarModSeq":17,"contactsModSeq":9,"unseen":3,"alert":{"type":"mail","from":"Robert Norris","subject":"Holiday pics","url":"imap://mail.example.com/user/alice;UIDVALIDITY=1795878360/;UID=1"}}"#;

fn webpush(c: &mut Criterion) {
    let ua = mailpush::push::webpush::decode_key(UA_PUBLIC).unwrap();
    let auth = mailpush::push::webpush::decode_key(AUTH).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vapid = Vapid::load_or_generate(&dir.path().join("vapid.pem"), None).unwrap();
    let mut group = c.benchmark_group("webpush");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt_aes128gcm", |b| {
        b.iter(|| ece::encrypt(std::hint::black_box(PAYLOAD), &ua, &auth).unwrap())
    });
    // Minting a token: what a cache miss costs (once per push service every 11 hours).
    let mut now = 1_800_000_000;
    group.bench_function("vapid_token_minted", |b| {
        b.iter(|| {
            now += 12 * 3600;
            vapid
                .authorization("https://fcm.googleapis.com", now)
                .unwrap()
        })
    });
    group.bench_function("vapid_token_cached", |b| {
        b.iter(|| {
            vapid
                .authorization("https://fcm.googleapis.com", now)
                .unwrap()
        })
    });
    group.finish();
}

fn coalesce(c: &mut Criterion) {
    let job = |device: i64| PushJob {
        id: String::new(),
        user: "alice".into(),
        device: Device {
            id: device,
            user_id: "alice".into(),
            platform: Platform::Apns,
            token: "ab".repeat(32),
            app: "com.example.mail".into(),
            environment: Environment::Production,
            created_at: 0,
            registered_at: 0,
            webpush: None,
        },
        kind: PushKind::Badge { unseen: 3 },
        state: Default::default(),
        received_at: std::time::Instant::now(),
    };
    let coalescer = Coalescer::new(Duration::from_secs(1));
    let now = tokio::time::Instant::now();
    let mut group = c.benchmark_group("coalesce");
    group.throughput(Throughput::Elements(1));
    // A burst on one device: every offer after the first merges into the held update.
    let held = job(1);
    group.bench_function("badge_merged", |b| {
        b.iter(|| coalescer.offer(held.clone(), now))
    });
    group.finish();
}

criterion_group!(benches, webpush, coalesce);
criterion_main!(benches);
