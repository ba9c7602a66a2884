//! The worker pool: a dispatcher claims due jobs for the free workers, and up to one per
//! worker ahead of them, in one statement, and starts a send for each free worker (a worker
//! that finishes takes the next job claimed ahead); a recorder (`results.rs`) writes their
//! results a batch per transaction, as they come in. Per email that leaves a fraction of a
//! claim and of a commit instead of one of each, which on SQLite was most of a job's cost
//! (each statement a round trip to its thread) and on PostgreSQL a flush of its log. The dispatcher wakes when the writer has inserted
//! jobs, when a worker is free again or when the next job falls due, never on a fixed poll.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::email::{Envelope, MailTransport, alarm_email, sieve_email};
use super::journal::{DeliveryJournal, Journal};
use super::render::Templates;
use super::results::{Finished, RECORD_BATCH, record_results};
use super::sms::{SmsTransport, squeeze};
use super::{SendError, now_ms};
use crate::backoff::{RetryPolicy, random_fraction};
use crate::config::NotifyConfig;
use crate::job::Work;
use crate::metrics::Metrics;
use crate::store::{Claim, Job, JobResult, Store};

/// How long a worker sleeps at most before looking again: the safety net for jobs changed by
/// another process (`mailpush jobs retry`, another node) that no wake-up announces.
const MAX_IDLE: Duration = Duration::from_secs(15);
/// The delivery journal's file in the data dir.
const JOURNAL_FILE: &str = "delivery.journal";
/// Retries never wait longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Swaps in freshly loaded templates (SIGHUP); a template folder that does not load leaves
/// the current set in place.
#[derive(Clone)]
pub struct TemplateReloader {
    current: Arc<std::sync::RwLock<Arc<Templates>>>,
}

impl TemplateReloader {
    /// Loads `dir` again and, if it loads, makes it the current set.
    pub fn reload(&self, dir: &Path) -> anyhow::Result<()> {
        let fresh = Templates::load(dir)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
        Ok(())
    }
}

/// What every worker shares.
pub struct Workers {
    store: Store,
    /// Replaced whole on SIGHUP; a send keeps the set it started with.
    templates: Arc<std::sync::RwLock<Arc<Templates>>>,
    mail: MailTransport,
    /// Where a send records that its final `.` goes out (the outbox never writes to it).
    journal: Journal,
    sms: SmsTransport,
    from: String,
    /// The domain of generated Message-IDs.
    domain: String,
    max_attempts: i64,
    retry_base: Duration,
    lease: Duration,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Workers {
    /// Loads the templates and builds the transports.
    pub fn new(
        config: &NotifyConfig,
        data_dir: &Path,
        store: Store,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Workers> {
        let templates = Templates::load(&config.templates_dir)
            .with_context(|| format!("notify.templates_dir {}", config.templates_dir.display()))?;
        let mail = MailTransport::new(&config.smtp, &data_dir.join("outbox"), config.workers)?;
        let journal_path = data_dir.join(JOURNAL_FILE);
        let file = DeliveryJournal::open(&journal_path).with_context(|| {
            format!(
                "cannot open the delivery journal {}",
                journal_path.display()
            )
        })?;
        let journal = Journal::new(&store, config.workers, file);
        let sms = SmsTransport::from_config(&config.sms, data_dir.join("sms.log"))?;
        if config.smtp.url.is_none() {
            tracing::info!(outbox = %data_dir.join("outbox").display(), "notify.smtp.url is not set: emails go to the outbox folder");
        }
        if config.sms.url.is_none() {
            tracing::info!(log = %data_dir.join("sms.log").display(), "notify.sms.url is not set: text messages go to the log file");
        }
        let domain = config
            .from
            .rsplit_once('@')
            .map_or("mailpush.invalid", |(_, domain)| domain)
            .to_owned();
        Ok(Workers {
            store,
            templates: Arc::new(std::sync::RwLock::new(Arc::new(templates))),
            mail,
            journal,
            sms,
            from: config.from.clone(),
            domain,
            max_attempts: i64::from(config.max_attempts.max(1)),
            retry_base: Duration::from_millis(config.retry_base_ms),
            lease: Duration::from_secs(config.lease_secs.max(1)),
            metrics,
            wake,
        })
    }

    /// The handle SIGHUP reloads the templates through.
    pub fn templates(&self) -> TemplateReloader {
        TemplateReloader {
            current: self.templates.clone(),
        }
    }

    /// Marks done the jobs a crash left running after their email reached the relay (see
    /// [`super::journal`]), then empties the journal. Runs before any worker claims a job.
    pub async fn recover(&self) -> anyhow::Result<()> {
        // A node that moved from SQLite to PostgreSQL may still hold a file of the old runs.
        let journal = self.journal.file();
        let path = journal.path();
        let entries = journal
            .entries()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if entries.is_empty() {
            return Ok(());
        }
        let finished = self
            .store
            .finish_delivered_jobs(&entries, now_ms())
            .await
            .context("cannot apply the delivery journal")?;
        if finished > 0 {
            tracing::info!(
                jobs = finished,
                "jobs whose email reached the relay before a crash are marked done"
            );
        }
        journal
            .clear()
            .with_context(|| format!("cannot clear {}", path.display()))?;
        Ok(())
    }

    /// Starts the dispatcher of `count` workers and the recorder of their results.
    pub fn spawn(self, count: usize, tracker: &TaskTracker, shutdown: CancellationToken) {
        let count = count.max(1);
        let (results, recorded) = mpsc::channel(RECORD_BATCH);
        tracker.spawn(record_results(
            self.store.clone(),
            recorded,
            self.wake.clone(),
        ));
        tracker.spawn(Arc::new(self).dispatch(count, results, tracker.clone(), shutdown));
    }

    /// Claims due jobs for the free workers and starts a send for each, until shutdown. Each
    /// send holds a worker's permit, so at most `count` run at once; at shutdown the sends
    /// under way finish and their results are recorded.
    ///
    /// A claim takes up to `count` jobs more than there are free workers, kept here in claim
    /// order: a worker that finishes its email starts the next of them at once, and the
    /// pool pays one claim for about `count` jobs instead of one for the few workers that
    /// happen to be free together (on PostgreSQL a claim was a third of the server's time an
    /// email). A job waits here only while sends are under way; one whose lease is half gone,
    /// and all of them at shutdown, are given back to the queue with their attempt undone.
    async fn dispatch(
        self: Arc<Self>,
        count: usize,
        results: mpsc::Sender<Finished>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let free = Arc::new(Semaphore::new(count));
        let mut ahead: VecDeque<(Job, tokio::time::Instant)> = VecDeque::with_capacity(count);
        while !shutdown.is_cancelled() {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = free.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while let Ok(permit) = free.clone().try_acquire_owned() {
                permits.push(permit);
            }
            // Jobs claimed ahead go first, while half their lease is left.
            let mut stale = Vec::new();
            while !permits.is_empty() {
                let Some((job, lease_ends)) = ahead.pop_front() else {
                    break;
                };
                let left = lease_ends.saturating_duration_since(tokio::time::Instant::now());
                if left < self.lease / 2 {
                    stale.push(job);
                    continue;
                }
                let permit = permits.pop().expect("checked above");
                tracker.spawn(
                    self.clone()
                        .process(job, lease_ends, permit, results.clone()),
                );
            }
            self.release(&stale).await;
            if permits.is_empty() {
                continue;
            }
            // Register for a wake-up before looking, so an insert in between is not missed.
            let woken = self.wake.notified();
            let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
            let claimed_at = tokio::time::Instant::now();
            match self
                .store
                .claim_jobs(now_ms(), lease, permits.len() + count)
                .await
            {
                Ok(claims) if !claims.is_empty() => {
                    for job in claims.into_iter().filter_map(|claim| self.claimed(claim)) {
                        let lease_ends = claimed_at + self.lease;
                        match permits.pop() {
                            Some(permit) => {
                                tracker.spawn(self.clone().process(
                                    job,
                                    lease_ends,
                                    permit,
                                    results.clone(),
                                ));
                            }
                            None => ahead.push_back((job, lease_ends)),
                        }
                    }
                }
                Ok(_) => {
                    drop(permits);
                    let wait = self.until_next_due().await;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = woken => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(err) => {
                    drop(permits);
                    tracing::error!(error = %err, "cannot claim jobs; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let unstarted: Vec<Job> = ahead.into_iter().map(|(job, _)| job).collect();
        self.release(&unstarted).await;
    }

    /// Gives jobs claimed ahead but not started back to the queue; if that fails, they run
    /// again when their lease runs out.
    async fn release(&self, jobs: &[Job]) {
        if jobs.is_empty() {
            return;
        }
        let claims: Vec<(i64, i64)> = jobs.iter().map(|job| (job.id, job.attempts)).collect();
        match self.store.release_jobs(&claims).await {
            Ok(released) => {
                for _ in 0..released {
                    self.metrics.job_outcome("released");
                }
                tracing::debug!(
                    jobs = released,
                    "jobs claimed ahead given back to the queue"
                );
            }
            Err(err) => {
                tracing::warn!(jobs = claims.len(), error = %err, "cannot give back jobs claimed ahead; they run again when their lease runs out");
            }
        }
    }

    /// The job to send, if the claim is one; a claim that settled the job itself is counted
    /// and logged here.
    fn claimed(&self, claim: Claim) -> Option<Job> {
        match claim {
            Claim::Job(job) => Some(job),
            Claim::NoCredit(job) => {
                self.metrics.job_outcome("no_credit");
                tracing::info!(job = job.id, user = %job.user_id, "SMS not sent: no credit left");
                None
            }
            Claim::Delivered(job) => {
                self.metrics.job_outcome("sent");
                tracing::info!(job = job.id, user = %job.user_id, "job's email reached the relay before its worker died; marked done");
                None
            }
        }
    }

    async fn until_next_due(&self) -> Duration {
        match self.store.next_job_due().await {
            Ok(Some(due)) => {
                Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)).min(MAX_IDLE)
            }
            _ => MAX_IDLE,
        }
    }

    /// Sends one claimed job and hands its result to the recorder; the worker is free again
    /// once the result is handed over.
    async fn process(
        self: Arc<Self>,
        job: Job,
        lease_ends: tokio::time::Instant,
        _worker: OwnedSemaphorePermit,
        results: mpsc::Sender<Finished>,
    ) {
        // A send that outlives its lease would race the next claim of the same job.
        let budget = lease_ends
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_millis(500));
        let result = match tokio::time::timeout(budget, self.send(&job)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Retry(format!(
                "send took longer than {budget:?}"
            ))),
        };
        let now = now_ms();
        let result = match result {
            Ok(()) => {
                self.metrics.job_outcome("sent");
                self.metrics.job_latency(Duration::from_millis(
                    u64::try_from(now - job.created_at).unwrap_or(0),
                ));
                JobResult::Done
            }
            Err(SendError::Retry(error)) if job.attempts < self.max_attempts => {
                let delay = self.backoff(job.attempts);
                self.metrics.job_outcome("retried");
                tracing::warn!(
                    job = job.id,
                    attempt = job.attempts,
                    ?delay,
                    reason = error,
                    "job failed; will retry"
                );
                let run_at_ms = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                JobResult::Retry { run_at_ms, error }
            }
            Err(SendError::Retry(error) | SendError::Permanent(error)) => {
                self.metrics.job_outcome("dead");
                tracing::warn!(
                    job = job.id,
                    attempts = job.attempts,
                    reason = error,
                    "job is dead"
                );
                JobResult::Dead { error }
            }
        };
        let finished = Finished {
            id: job.id,
            result,
            lease_ends,
        };
        // The recorder outlives every sender; a send fails only if its task panicked.
        if results.send(finished).await.is_err() {
            tracing::error!(job = job.id, "the job's result cannot be recorded");
        }
    }

    fn current_templates(&self) -> Arc<Templates> {
        self.templates
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn send(&self, job: &Job) -> Result<(), SendError> {
        let templates = self.current_templates();
        let work = Work::from_payload(&job.payload)
            .map_err(|err| SendError::Permanent(format!("unreadable payload: {err}")))?;
        let envelope = Envelope {
            from: &self.from,
            message_id: format!("<mailpush.job{}@{}>", job.id, self.domain),
        };
        match work {
            Work::AlarmEmail { recipient, alarm } => {
                let user = self
                    .store
                    .user(&job.user_id)
                    .await
                    .map_err(|err| SendError::Retry(format!("users: {err}")))?;
                let message =
                    alarm_email(&envelope, &recipient, &user.language, &alarm, &templates)?;
                self.mail
                    .send(message, self.journal.commit(job.id, job.attempts).await)
                    .await
            }
            Work::SieveEmail {
                uri,
                message,
                importance,
            } => {
                let message = sieve_email(&envelope, &job.user_id, &uri, &message, &importance)?;
                self.mail
                    .send(message, self.journal.commit(job.id, job.attempts).await)
                    .await
            }
            Work::Sms { number, text } => {
                let number = match number {
                    Some(number) => number,
                    None => self
                        .store
                        .user(&job.user_id)
                        .await
                        .map_err(|err| SendError::Retry(format!("users: {err}")))?
                        .sms_number
                        .ok_or_else(|| {
                            SendError::Permanent(
                                "no SMS number: none in the script, none stored for the user"
                                    .into(),
                            )
                        })?,
                };
                self.sms.send(&templates, &number, &squeeze(&text)).await
            }
        }
    }

    /// `base·2^(attempts-1)` with its upper half random, capped at an hour.
    fn backoff(&self, attempts: i64) -> Duration {
        let policy = RetryPolicy {
            max_attempts: u32::MAX,
            base: self.retry_base,
            cap: MAX_BACKOFF,
        };
        policy.delay(u32::try_from(attempts).unwrap_or(1), random_fraction())
    }
}
