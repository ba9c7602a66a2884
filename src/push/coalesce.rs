//! Coalescing: a desktop client that marks fifty messages read must not buzz a phone fifty
//! times. Badge and state updates for a device are held for `push.coalesce_ms` and merged, the
//! newest winning; when the window ends the one left is sent. Alerts (new mail, reminders) are
//! never held, and new mail that carries the badge replaces a held update, which would only
//! repeat it a moment later.
//!
//! Every window has the same length, so windows end in the order they began: the deadlines are
//! a FIFO and the flusher sleeps until the first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PushJob;
use crate::route::PushKind;

/// The held updates of every device, and when each is due.
pub struct Coalescer {
    window: Duration,
    held: Mutex<Held>,
    /// Woken when the first deadline is queued, so an idle flusher needs no timer.
    queued: Notify,
}

#[derive(Default)]
struct Held {
    /// Device id → the newest update, and when its window ends.
    jobs: HashMap<i64, (PushJob, Instant)>,
    /// Window ends in order, with their device; a device's entry is stale when its job was
    /// sent early (its deadline no longer matches).
    deadlines: VecDeque<(Instant, i64)>,
}

/// What to do with an offered push.
#[derive(Debug, Default)]
pub struct Offered {
    /// Send this now.
    pub send: Option<PushJob>,
    /// A held update that will not be sent: merged into a newer one, or made moot by an alert.
    pub superseded: Option<PushJob>,
}

impl Coalescer {
    /// Holds updates for `window`; zero holds nothing.
    pub fn new(window: Duration) -> Coalescer {
        Coalescer {
            window,
            held: Mutex::new(Held::default()),
            queued: Notify::new(),
        }
    }

    /// Takes a push for one device: an alert is sent at once, an update is held or merged.
    pub fn offer(&self, job: PushJob, now: Instant) -> Offered {
        if self.window.is_zero() {
            return Offered {
                send: Some(job),
                superseded: None,
            };
        }
        let mut held = self.lock();
        let device = job.device.id;
        if job.kind.is_alert() {
            let moot = held
                .jobs
                .get(&device)
                .is_some_and(|(waiting, _)| alert_covers(&job.kind, &waiting.kind));
            let superseded = moot
                .then(|| held.jobs.remove(&device).map(|(job, _)| job))
                .flatten();
            return Offered {
                send: Some(job),
                superseded,
            };
        }
        if let Some((waiting, _)) = held.jobs.get_mut(&device) {
            let mut newer = job;
            // A state change after a badge keeps the badge (and takes the newer state).
            if matches!(newer.kind, PushKind::State) {
                newer.kind = waiting.kind.clone();
            }
            let older = std::mem::replace(waiting, newer);
            return Offered {
                send: None,
                superseded: Some(older),
            };
        }
        let due = now + self.window;
        held.jobs.insert(device, (job, due));
        held.deadlines.push_back((due, device));
        if held.deadlines.len() == 1 {
            self.queued.notify_one();
        }
        Offered::default()
    }

    /// The held updates whose window has ended by `now`.
    pub fn take_due(&self, now: Instant) -> Vec<PushJob> {
        let mut held = self.lock();
        let mut due = Vec::new();
        while let Some(&(deadline, device)) = held.deadlines.front() {
            if deadline > now {
                break;
            }
            held.deadlines.pop_front();
            if held.jobs.get(&device).is_some_and(|(_, d)| *d == deadline)
                && let Some((job, _)) = held.jobs.remove(&device)
            {
                due.push(job);
            }
        }
        due
    }

    /// Updates held now.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands each update to `release` when its window ends, until `shutdown` (what is held
    /// then is dropped: counts and states, which the next change sends again).
    pub async fn run(&self, release: impl Fn(PushJob), shutdown: CancellationToken) {
        loop {
            let next = self.lock().deadlines.front().map(|(deadline, _)| *deadline);
            let wait = async {
                match next {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => self.queued.notified().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wait => {}
            }
            for job in self.take_due(Instant::now()) {
                release(job);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether sending `alert` makes the held `update` moot: new mail with the unseen count
/// carries a badge, and every push carries the newest state.
fn alert_covers(alert: &PushKind, update: &PushKind) -> bool {
    match (alert, update) {
        (PushKind::NewMail { unseen, .. }, PushKind::Badge { .. }) => unseen.is_some(),
        (PushKind::NewMail { .. }, PushKind::State) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Device, Environment, Platform};
    use crate::stream::UserState;

    fn job(device: i64, kind: PushKind) -> PushJob {
        PushJob {
            id: String::new(),
            user: "alice".into(),
            device: Device {
                id: device,
                user_id: "alice".into(),
                platform: Platform::Apns,
                token: "aa".into(),
                app: "app".into(),
                environment: Environment::Production,
                created_at: 0,
                registered_at: 0,
                webpush: None,
            },
            kind,
            state: UserState::default(),
            received_at: std::time::Instant::now(),
        }
    }

    fn new_mail(unseen: Option<u64>) -> PushKind {
        PushKind::NewMail {
            from: "Bob".into(),
            subject: "Hi".into(),
            unseen,
            thread_id: String::new(),
            url: String::new(),
        }
    }

    fn badge(job: &PushJob) -> Option<u64> {
        match job.kind {
            PushKind::Badge { unseen } => Some(unseen),
            PushKind::NewMail { unseen, .. } => unseen,
            _ => None,
        }
    }

    #[test]
    fn fifty_flag_changes_in_two_seconds_make_two_pushes_and_new_mail_goes_at_once() {
        let coalescer = Coalescer::new(Duration::from_secs(1));
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut superseded = 0;
        for n in 0..50u64 {
            let now = start + Duration::from_millis(n * 40);
            sent.extend(coalescer.take_due(now));
            let kind = if n == 25 {
                new_mail(Some(100 - n))
            } else {
                PushKind::Badge { unseen: 100 - n }
            };
            let offered = coalescer.offer(job(1, kind), now);
            if let Some(job) = offered.send {
                assert_eq!(n, 25, "only the alert goes at once");
                assert_eq!(badge(&job), Some(75));
                sent.push(job);
            }
            superseded += usize::from(offered.superseded.is_some());
        }
        sent.extend(coalescer.take_due(start + Duration::from_secs(10)));
        let badges: Vec<u64> = sent.iter().filter_map(badge).collect();
        assert!(sent.len() <= 3, "{badges:?}");
        assert_eq!(
            sent.iter().filter(|j| !j.kind.is_alert()).count(),
            2,
            "{badges:?}"
        );
        assert_eq!(
            *badges.last().unwrap(),
            51,
            "the newest badge is the last sent"
        );
        assert_eq!(
            superseded + sent.len(),
            50,
            "every update is sent or merged"
        );
        assert!(coalescer.is_empty());
    }

    #[test]
    fn devices_are_held_apart_and_state_keeps_a_held_badge() {
        let coalescer = Coalescer::new(Duration::from_secs(1));
        let now = Instant::now();
        assert!(
            coalescer
                .offer(job(1, PushKind::Badge { unseen: 4 }), now)
                .send
                .is_none()
        );
        assert!(coalescer.offer(job(2, PushKind::State), now).send.is_none());
        let merged = coalescer.offer(job(1, PushKind::State), now);
        assert_eq!(merged.superseded.map(|j| badge(&j)), Some(Some(4)));
        // New mail without a count does not make a held badge moot.
        let alert = coalescer.offer(job(1, new_mail(None)), now);
        assert!(alert.send.is_some() && alert.superseded.is_none());
        // A reminder makes nothing moot.
        assert!(
            coalescer
                .offer(
                    job(
                        2,
                        PushKind::Reminder {
                            summary: String::new(),
                            start: String::new()
                        }
                    ),
                    now
                )
                .superseded
                .is_none()
        );
        assert!(
            coalescer
                .take_due(now + Duration::from_millis(999))
                .is_empty()
        );
        let due = coalescer.take_due(now + Duration::from_secs(1));
        assert_eq!(due.len(), 2);
        assert_eq!(badge(&due[0]), Some(4), "device 1 keeps its badge");
        assert!(matches!(due[1].kind, PushKind::State));
    }

    #[test]
    fn an_early_send_leaves_no_stale_deadline() {
        let coalescer = Coalescer::new(Duration::from_secs(1));
        let start = Instant::now();
        coalescer.offer(job(1, PushKind::Badge { unseen: 1 }), start);
        // New mail with the count takes the held badge; a new badge opens a new window.
        assert!(
            coalescer
                .offer(job(1, new_mail(Some(2))), start)
                .superseded
                .is_some()
        );
        let later = start + Duration::from_millis(500);
        coalescer.offer(job(1, PushKind::Badge { unseen: 1 }), later);
        assert!(
            coalescer
                .take_due(start + Duration::from_secs(1))
                .is_empty(),
            "not at the old deadline"
        );
        assert_eq!(coalescer.take_due(later + Duration::from_secs(1)).len(), 1);
    }

    #[test]
    fn a_zero_window_holds_nothing() {
        let coalescer = Coalescer::new(Duration::ZERO);
        let offered = coalescer.offer(job(1, PushKind::Badge { unseen: 1 }), Instant::now());
        assert!(offered.send.is_some());
        assert!(coalescer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_releases_each_window_when_it_ends() {
        let coalescer = std::sync::Arc::new(Coalescer::new(Duration::from_secs(1)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let flusher = tokio::spawn({
            let coalescer = coalescer.clone();
            let shutdown = shutdown.clone();
            async move {
                coalescer
                    .run(move |job| drop(tx.send((Instant::now(), job))), shutdown)
                    .await;
            }
        });
        let start = Instant::now();
        coalescer.offer(job(1, PushKind::Badge { unseen: 9 }), start);
        let (at, job) = rx.recv().await.unwrap();
        assert_eq!(at - start, Duration::from_secs(1));
        assert_eq!(badge(&job), Some(9));
        shutdown.cancel();
        flusher.await.unwrap();
    }
}
