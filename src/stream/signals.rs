//! What a user's streams are told besides the state: calendar reminders, keepalive beats and
//! the shutdown goodbye.
//!
//! They ride in the user's latest-value channel with the state, so a stream waits on one thing
//! only. A latest-value channel keeps no queue, so each signal is a count (reminders sent, beats
//! given) or a flag (closing), and each stream keeps how far it got ([`SignalsSeen`]).
//! [`Signals::next`] turns the difference into the one [`Signal`] a stream acts on next, most
//! urgent first; nothing else reads the counts.

use std::sync::Arc;

use bytes::Bytes;

/// Reminders a stream may fall behind by before it misses the oldest.
pub const REMINDER_BACKLOG: usize = 8;

/// The signals of one user, in their channel. Every user in memory carries one, so it is kept
/// to 24 bytes: the counts are `u32` and compared by wrapping difference (a stream would have
/// to fall four billion behind to miscount), and the rare reminders sit behind a thin pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    /// Reminder frames sent to the user so far; the last [`REMINDER_BACKLOG`] are in
    /// `reminders`, the newest last.
    reminders_sent: u32,
    reminders: Option<Arc<Vec<Bytes>>>,
    /// Ticks of the shared keepalive clock while the user had streams.
    beats: u32,
    /// Set at shutdown: every stream writes its goodbye and ends.
    closing: bool,
}

/// How far one stream got through its user's signals. It starts where the signals stood when
/// the stream opened: earlier reminders and beats are not its to act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalsSeen {
    reminders: u32,
    beats: u32,
}

/// The next thing a stream must act on, other than the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Shutdown: write the goodbye and end.
    Closing,
    /// A reminder frame to write.
    Reminder(Bytes),
    /// The keepalive clock ticked this many times since the stream last looked.
    Beats(u64),
}

impl Signals {
    /// A stream's starting point: everything so far counts as seen.
    pub fn seen_now(&self) -> SignalsSeen {
        SignalsSeen {
            reminders: self.reminders_sent,
            beats: self.beats,
        }
    }

    /// The signal `seen` has not acted on yet, most urgent first, and marks it acted on.
    pub fn next(&self, seen: &mut SignalsSeen) -> Option<Signal> {
        if self.closing {
            return Some(Signal::Closing);
        }
        let unsent = self.reminders_sent.wrapping_sub(seen.reminders);
        let kept = self.kept();
        if unsent > 0 && !kept.is_empty() {
            // A stream more than the backlog behind skips the oldest.
            let backlog = (unsent as usize).min(kept.len());
            seen.reminders = self.reminders_sent.wrapping_sub(backlog as u32 - 1);
            return Some(Signal::Reminder(kept[kept.len() - backlog].clone()));
        }
        let ticks = self.beats.wrapping_sub(seen.beats);
        if ticks > 0 {
            seen.beats = self.beats;
            return Some(Signal::Beats(u64::from(ticks)));
        }
        None
    }

    /// Adds a reminder frame, keeping the last [`REMINDER_BACKLOG`].
    pub fn remind(&mut self, frame: Bytes) {
        let kept = self.kept();
        let older = &kept[kept.len() - kept.len().min(REMINDER_BACKLOG - 1)..];
        self.reminders = Some(Arc::new(older.iter().cloned().chain([frame]).collect()));
        self.reminders_sent = self.reminders_sent.wrapping_add(1);
    }

    /// One tick of the keepalive clock.
    pub fn beat(&mut self) {
        self.beats = self.beats.wrapping_add(1);
    }

    /// Shutdown.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Keepalive ticks so far.
    pub fn beats(&self) -> u32 {
        self.beats
    }

    /// Whether shutdown was signalled.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Reminders sent so far, and the ones still kept.
    pub fn reminders(&self) -> (u32, &[Bytes]) {
        (self.reminders_sent, self.kept())
    }

    /// The reminders kept, oldest first.
    fn kept(&self) -> &[Bytes] {
        self.reminders.as_deref().map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_come_most_urgent_first_and_once() {
        let mut signals = Signals::default();
        let mut seen = signals.seen_now();
        assert_eq!(signals.next(&mut seen), None);
        signals.beat();
        signals.beat();
        signals.remind(Bytes::from_static(b"r0"));
        assert_eq!(
            signals.next(&mut seen),
            Some(Signal::Reminder(Bytes::from_static(b"r0")))
        );
        assert_eq!(signals.next(&mut seen), Some(Signal::Beats(2)));
        assert_eq!(signals.next(&mut seen), None);
        signals.close();
        assert_eq!(signals.next(&mut seen), Some(Signal::Closing));
        assert_eq!(
            signals.next(&mut seen),
            Some(Signal::Closing),
            "until it ends"
        );
    }

    #[test]
    fn a_stream_far_behind_skips_the_oldest_reminders() {
        let mut signals = Signals::default();
        let mut seen = signals.seen_now();
        for n in 0..REMINDER_BACKLOG + 3 {
            signals.remind(Bytes::from(format!("r{n}")));
        }
        let (sent, kept) = signals.reminders();
        assert_eq!(
            (sent, kept.len()),
            (REMINDER_BACKLOG as u32 + 3, REMINDER_BACKLOG)
        );
        for n in 3..REMINDER_BACKLOG + 3 {
            assert_eq!(
                signals.next(&mut seen),
                Some(Signal::Reminder(Bytes::from(format!("r{n}"))))
            );
        }
        assert_eq!(signals.next(&mut seen), None);
        let late = signals.seen_now();
        assert_eq!(
            signals.clone().next(&mut late.clone()),
            None,
            "a later stream replays none"
        );
    }
}
