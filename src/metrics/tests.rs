//! What `/metrics` shows: series present from the start, capped labels, rejected packets.

use super::*;

#[test]
fn renders_counts() {
    let metrics = Metrics::new();
    metrics.event_received(Source::Cyrus, "MessageNew", Some("slot1"));
    metrics.event_received(Source::Cyrus, "MessageNew", Some("slot1"));
    metrics.packet_rejected(
        Source::Dlist,
        &ParseError::Truncated("dlist record"),
        3,
        b"%(\0",
    );
    let text = metrics.render(Levels {
        connections: 3,
        ..Levels::default()
    });
    assert!(
        text.contains("mailpush_events_received_total{source=\"cyrus\",type=\"MessageNew\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("mailpush_slot_events_total{slot=\"slot1\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("mailpush_packets_rejected_total{source=\"dlist\",reason=\"truncated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mailpush_eventsource_connections 3"),
        "{text}"
    );
}

#[test]
fn slots_are_capped() {
    let metrics = Metrics::new();
    for n in 0..MAX_SLOTS + 10 {
        metrics.event_received(Source::Cyrus, "Login", Some(&format!("slot{n}")));
    }
    let text = metrics.render(Levels::default());
    assert!(
        text.contains("mailpush_slot_events_total{slot=\"other\"} 10"),
        "{text}"
    );
}
