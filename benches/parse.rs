//! Parse cost of the ingest hot path: one Cyrus MessageNew datagram to an `Event`, and the
//! same through `route`. Run with `cargo bench --bench parse`; criterion reports events/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailpush::event::{self, packet};
use mailpush::route::route;

/// The allocator the binary runs with (src/main.rs), so the figure is the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A real MessageNew from Cyrus 3.6 with every extra parameter on (1.6 KB).
const MESSAGE_NEW: &[u8] = include_bytes!("../tests/fixtures/cyrus/008-MessageNew.bin");
/// A MailboxModseq with `vnd.fastmail.counters` (FastMail's parameter set).
const MODSEQ_COUNTERS: &[u8] =
    include_bytes!("../tests/fixtures/cyrus/fastmail-params/002-MailboxModseq.bin");

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_new_datagram", |b| {
        b.iter(|| {
            let notification =
                packet::from_datagram(std::hint::black_box(MESSAGE_NEW)).expect("fixture parses");
            event::from_notification(notification).expect("fixture parses")
        })
    });
    group.bench_function("message_new_datagram_and_route", |b| {
        b.iter(|| {
            let notification =
                packet::from_datagram(std::hint::black_box(MESSAGE_NEW)).expect("fixture parses");
            let event = event::from_notification(notification).expect("fixture parses");
            route(&event)
        })
    });
    group.bench_function("modseq_counters_datagram", |b| {
        b.iter(|| {
            let notification = packet::from_datagram(std::hint::black_box(MODSEQ_COUNTERS))
                .expect("fixture parses");
            event::from_notification(notification).expect("fixture parses")
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
