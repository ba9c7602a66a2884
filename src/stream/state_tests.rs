//! The hub's tests: caps, rising states, signals, slices and eviction, on a hub of its own.

use super::*;
use crate::stream::signals::REMINDER_BACKLOG;

fn mail(modseq: u64) -> StateChange {
    StateChange {
        mail: Some(modseq),
        ..StateChange::default()
    }
}

#[test]
fn state_only_rises() {
    let hub = StateHub::new(10, 10);
    assert!(hub.apply("alice", &mail(5)));
    assert!(!hub.apply("alice", &mail(3)));
    assert!(!hub.apply("alice", &mail(5)));
    assert!(hub.apply(
        "alice",
        &StateChange {
            calendar: Some(2),
            ..StateChange::default()
        }
    ));
    assert_eq!(
        hub.current("alice"),
        UserState {
            mail: 5,
            calendar: 2,
            contacts: 0,
            delivered: 0,
            ..UserState::default()
        }
    );
    assert_eq!(hub.current("bob"), UserState::default());
    assert!(!hub.apply("carol", &StateChange::default()));
}

#[test]
fn subscribers_wake_on_change_only() {
    let hub = StateHub::new(10, 10);
    let mut sub = hub.subscribe("alice").unwrap();
    assert!(!sub.receiver.has_changed());
    hub.apply("alice", &mail(1));
    assert!(sub.receiver.has_changed());
    let published = sub.receiver.borrow_and_update().published.clone();
    assert_eq!(published.state.mail, 1);
    assert_eq!(
        published.frame,
        crate::stream::legacy::frame(&published.state),
        "encoded once, in the channel"
    );
    assert!(
        published.changed_at.elapsed().is_some(),
        "stamped when it moved"
    );
    hub.apply("alice", &mail(1));
    assert!(!sub.receiver.has_changed());
    hub.apply("bob", &mail(9));
    assert!(!sub.receiver.has_changed());
}

#[test]
fn caps() {
    let hub = StateHub::new(3, 2);
    let a1 = hub.subscribe("alice").unwrap();
    let _a2 = hub.subscribe("alice").unwrap();
    assert_eq!(
        hub.subscribe("alice").err(),
        Some(SubscribeError::UserLimit)
    );
    let _b1 = hub.subscribe("bob").unwrap();
    assert_eq!(
        hub.subscribe("carol").err(),
        Some(SubscribeError::ServerLimit)
    );
    assert_eq!(hub.connections(), 3);
    drop(a1);
    assert_eq!(hub.connections(), 2);
    assert!(hub.subscribe("alice").is_ok());
}

#[test]
fn reminders_reach_open_streams_only() {
    let hub = StateHub::new(10, 10);
    assert_eq!(
        hub.remind("alice", Bytes::from_static(b"frame")),
        0,
        "nobody listens yet"
    );
    let mut first = hub.subscribe("alice").unwrap();
    let second = hub.subscribe("alice").unwrap();
    let bob = hub.subscribe("bob").unwrap();
    assert_eq!(hub.remind("alice", Bytes::from_static(b"frame")), 2);
    assert!(first.receiver.has_changed(), "woken");
    let signals = first.receiver.borrow_and_update().signals.clone();
    assert_eq!(
        signals.reminders(),
        (1, &[Bytes::from_static(b"frame")][..])
    );
    assert!(!bob.receiver.has_changed(), "not bob's");
    let late = hub.subscribe("alice").unwrap();
    assert_eq!(
        late.signals_seen,
        signals.seen_now(),
        "a later stream does not replay it"
    );
    for n in 0..10 {
        hub.remind("alice", Bytes::from(format!("r{n}")));
    }
    let signals = first.receiver.borrow_and_update().signals.clone();
    let (sent, kept) = signals.reminders();
    assert_eq!(sent, 11);
    assert_eq!(kept.len(), REMINDER_BACKLOG, "the last few only");
    assert_eq!(kept[REMINDER_BACKLOG - 1], "r9");
    drop((first, second, late));
    assert_eq!(
        hub.remind("alice", Bytes::from_static(b"late")),
        0,
        "the streams are gone"
    );
}

#[test]
fn beats_wake_users_with_streams_and_closing_reaches_later_cells() {
    let hub = StateHub::new(10, 10);
    hub.apply("idle", &mail(1));
    let mut alice = hub.subscribe("alice").unwrap();
    hub.beat();
    assert!(alice.receiver.has_changed());
    assert_eq!(alice.receiver.borrow_and_update().signals.beats(), 1);
    assert_eq!(
        (0..SLICES)
            .map(|slice| hub.cells_with_streams(slice).len())
            .sum::<usize>(),
        1,
        "not the user nobody watches"
    );
    hub.close_streams();
    assert!(alice.receiver.borrow_and_update().signals.is_closing());
    let late = hub.subscribe("newcomer").unwrap();
    assert!(
        late.receiver.borrow().signals.is_closing(),
        "a stream opened during shutdown ends too"
    );
}
