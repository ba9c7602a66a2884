//! The hand-off from ingest to everything downstream: count the event, route it, carry out
//! the actions.
//!
//! Every listener calls [`Pipeline::dispatch`] from its receive loop, so it must never wait:
//! state updates are a map lookup and a `watch` send, device pushes go on a bounded queue that
//! drops rather than blocks, and jobs are appended to the spool (one `write`, no wait for the
//! database): never an `.await` here.

use std::sync::Arc;

use crate::cluster::Reminders;
use crate::event::{Event, ParseError};
use crate::ingest::Source;
use crate::metrics::Metrics;
use crate::notify::JobHandle;
use crate::notify::spool::Ticket;
use crate::push::PushHandle;
use crate::route::{Action, PushKind, PushRequest, route};
use crate::stream::StateHub;

/// What ingest hands events to.
pub struct Pipeline {
    hub: Arc<StateHub>,
    push: PushHandle,
    jobs: JobHandle,
    /// In a cluster, reminders also go to the user's streams on other nodes. (States need no
    /// such hand-off: the record's writer publishes them.)
    reminders: Option<Reminders>,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// Connects ingest to live state, device pushes, the job writer and metrics.
    pub fn new(
        hub: Arc<StateHub>,
        push: PushHandle,
        jobs: JobHandle,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        Pipeline {
            hub,
            push,
            jobs,
            reminders: None,
            metrics,
        }
    }

    /// Sends reminders to other nodes too.
    pub fn with_reminders(mut self, reminders: Reminders) -> Pipeline {
        self.reminders = Some(reminders);
        self
    }

    /// Counts, routes and applies one event. Never blocks. When the event made jobs, the
    /// ticket of the last one says what [`Pipeline::wait_durable`] waits for.
    pub fn dispatch(&self, source: Source, event: Event) -> Option<Ticket> {
        self.metrics
            .event_received(source, event.kind.label(), event.slot.as_deref());
        tracing::debug!(
            source = source.label(),
            event = %event.name,
            owner = event.owner.as_deref().unwrap_or("-"),
            slot = event.slot.as_deref().unwrap_or("-"),
            "event received"
        );
        let mut ticket = None;
        for action in route(&event) {
            match action {
                Action::UpdateState { user, change } => {
                    if self.hub.apply(&user, &change) {
                        self.metrics.state_updated();
                        // For browsers, whose push carries the state (held and merged).
                        let request = PushRequest {
                            user,
                            kind: PushKind::State,
                        };
                        self.push.enqueue(request, |user| self.hub.current(user));
                    }
                }
                Action::Push(request) => {
                    self.push.enqueue(request, |user| self.hub.current(user));
                }
                Action::Job(request) => ticket = self.jobs.enqueue(request).or(ticket),
                Action::Reminder(reminder) => {
                    let frame = crate::stream::reminder::encode(&reminder);
                    if let Some(reminders) = &self.reminders {
                        reminders.send(&reminder.user, frame.clone());
                    }
                    let streams = self.hub.remind(&reminder.user, frame);
                    tracing::debug!(user = %reminder.user, streams, "calendar reminder");
                }
                Action::Refused {
                    user,
                    reason,
                    count,
                } => {
                    self.metrics.limit_reached(reason, count);
                    tracing::warn!(user = %user, reason, count, "part of an event refused");
                }
            }
        }
        ticket
    }

    /// Waits until the jobs up to `ticket` are synced to disk, for listeners that acknowledge.
    pub async fn wait_durable(&self, ticket: Ticket) {
        self.jobs.wait_durable(ticket).await;
    }

    /// The metrics, for listeners that count their own refusals and limits.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a packet that could not be read and keeps its first bytes for the status page;
    /// the caller logs it (rate-limited). `size` is the whole packet's, `packet` what is at hand.
    pub fn reject(&self, source: Source, error: &ParseError, size: usize, packet: &[u8]) {
        self.metrics.packet_rejected(source, error, size, packet);
    }
}
