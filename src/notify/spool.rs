//! The job spool: an append-only file of jobs, written by the receive loop that read their
//! event before it reads the next packet, and drained into the jobs table by the writer.
//!
//! Why: Cyrus's datagrams are fire-and-forget, so a job that only lived in memory between the
//! socket and the database died with the process (`kill -9`, the OOM killer) or piled up in
//! memory while the database was away. Now a job costs one `write` of a JSON line to the page
//! cache before the loop moves on, which survives the process; a syncer task `fdatasync`s the
//! file behind it (one sync covers every line appended meanwhile), which survives the machine,
//! and [`Spool::wait_durable`] lets the `dlist:` socket acknowledge only after that. A database
//! outage of any length fills the spool on disk, up to `notify.spool_max_bytes`; past that a
//! new job is refused, counted and logged, and nothing already spooled is lost.
//!
//! Layout: `<data_dir>/spool/` (mode 0700) holds numbered segments (`00000000000000000001.jobs`,
//! mode 0600) and a `cursor` naming the segment and offset up to which the writer has put jobs
//! in the database. Each start appends to a new segment, so a line torn by a crash stays at the
//! end of an old one, where the reader skips it with a log line. The reader leaves a segment
//! once the appender has moved past it and deletes it once its jobs are written. The cursor is
//! written after each batch without a sync: if it is lost or behind, jobs are read again and
//! the table's idempotency keys make that harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::ingest::LogEvery;
use crate::job::JobRequest;
use crate::metrics::Metrics;

/// A segment is left for a new one past this size, so drained jobs leave the disk in steps.
const SEGMENT_BYTES: u64 = 4 << 20;
/// The most bytes the reader reads from a segment at once (more when one line is longer).
const READ_BYTES: usize = 256 << 10;
const CURSOR_FILE: &str = "cursor";
const SEGMENT_SUFFIX: &str = ".jobs";

/// The spool, shared by every receive loop (appending) and the syncer.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// A std mutex: held for one `write` of a line, never across an `.await`.
    appender: Mutex<Appender>,
    /// Bytes of jobs in segments that the writer has not put in the database yet.
    pending_bytes: AtomicU64,
    /// The segment being appended to; the reader leaves a segment only once this moved on.
    active_segment: AtomicU64,
    writer_wake: Notify,
    syncer_wake: Notify,
    /// The highest ticket whose line is on disk.
    synced: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    /// "Spool full" and write errors are logged at most once a second.
    refusals: LogEvery,
}

/// Says which spooled job to wait for; tickets rise with every append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Why a job could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the job spool is full: {pending} bytes wait for the database (notify.spool_max_bytes = {limit})"
    )]
    Full { pending: u64, limit: u64 },
    #[error("cannot write the job spool: {0}")]
    Io(#[from] io::Error),
}

struct Appender {
    file: File,
    segment: u64,
    segment_bytes: u64,
    /// Jobs appended since start: the last one's ticket.
    appended: u64,
    /// Segments left for a new one whose last lines are not synced yet.
    to_sync: Vec<File>,
}

/// The writer's side: where it is in the spool, and the bytes read but not yet handed out.
pub struct SpoolReader {
    dir: PathBuf,
    segment: u64,
    /// Offset in `segment` of the first byte of `pending`.
    offset: u64,
    file: Option<File>,
    pending: Vec<u8>,
    cursor: File,
}

/// Jobs read from the spool, to be committed once they are in the database.
pub struct SpoolBatch {
    pub requests: Vec<JobRequest>,
    /// Where the reader stands after these jobs.
    segment: u64,
    offset: u64,
    /// Bytes these jobs (and any unreadable lines among them) took in the spool.
    bytes: u64,
    /// Segments wholly read, to delete at commit.
    finished: Vec<u64>,
}

impl Spool {
    /// Opens the spool in `dir` (created 0700), starting a new segment, and returns the reader
    /// positioned at the first job not yet in the database.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Arc<Spool>, SpoolReader)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let segments = segments(dir)?;
        let cursor_path = dir.join(CURSOR_FILE);
        let cursor = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&cursor_path)?;
        let first = segments.first().copied().unwrap_or(1);
        let (segment, offset) = match read_cursor(&cursor) {
            Some((segment, offset)) if segments.contains(&segment) => (segment, offset),
            Some((segment, _)) => (
                segments
                    .iter()
                    .copied()
                    .find(|s| *s > segment)
                    .unwrap_or(first),
                0,
            ),
            None => (first, 0),
        };
        let mut pending_bytes = 0;
        for existing in &segments {
            let size = fs::metadata(segment_path(dir, *existing))?.len();
            if *existing > segment {
                pending_bytes += size;
            } else if *existing == segment {
                pending_bytes += size.saturating_sub(offset);
            }
        }
        let active = segments.last().map_or(1, |last| last + 1).max(segment);
        let file = create_segment(dir, active)?;
        metrics.job_spool_bytes(pending_bytes);
        let spool = Arc::new(Spool {
            dir: dir.to_owned(),
            max_bytes,
            appender: Mutex::new(Appender {
                file,
                segment: active,
                segment_bytes: 0,
                appended: 0,
                to_sync: Vec::new(),
            }),
            pending_bytes: AtomicU64::new(pending_bytes),
            active_segment: AtomicU64::new(active),
            writer_wake: Notify::new(),
            syncer_wake: Notify::new(),
            synced: watch::Sender::new(0),
            metrics,
            refusals: LogEvery::second(),
        });
        // Whatever an earlier run left is for the writer to drain first.
        spool.writer_wake.notify_one();
        let reader = SpoolReader {
            dir: dir.to_owned(),
            segment,
            offset,
            file: None,
            pending: Vec::new(),
            cursor,
        };
        Ok((spool, reader))
    }

    /// Appends one job: a single `write` of its line to the page cache. Never waits on
    /// anything but that write.
    pub fn append(&self, request: &JobRequest) -> Result<Ticket, SpoolError> {
        let mut line = serde_json::to_vec(request).unwrap_or_default();
        line.push(b'\n');
        let size = line.len() as u64;
        let pending = self.pending_bytes.load(Ordering::Relaxed);
        if pending + size > self.max_bytes {
            return Err(SpoolError::Full {
                pending,
                limit: self.max_bytes,
            });
        }
        let ticket = {
            let mut appender = self.appender.lock().unwrap_or_else(|p| p.into_inner());
            appender.file.write_all(&line)?;
            appender.segment_bytes += size;
            appender.appended += 1;
            if appender.segment_bytes >= SEGMENT_BYTES {
                self.rotate(&mut appender);
            }
            Ticket(appender.appended)
        };
        let pending = self.pending_bytes.fetch_add(size, Ordering::Relaxed) + size;
        self.metrics.job_spool_bytes(pending);
        self.writer_wake.notify_one();
        self.syncer_wake.notify_one();
        Ok(ticket)
    }

    /// Waits until the job with `ticket` is on disk (synced), not only in the page cache.
    pub async fn wait_durable(&self, ticket: Ticket) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as the spool, which the caller holds.
        let _ = synced.wait_for(|synced| *synced >= ticket.0).await;
    }

    /// Logs a spool failure at most once a second, so a full disk cannot flood the log.
    pub fn log_refusal(&self, user: &str, error: &SpoolError) {
        if self.refusals.ready() {
            tracing::error!(user = %user, error = %error, "job refused: not spooled");
        }
    }

    /// Bytes of jobs waiting for the database.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Moves appending to a new segment; the old one is synced by the syncer.
    fn rotate(&self, appender: &mut Appender) {
        let next = appender.segment + 1;
        match create_segment(&self.dir, next) {
            Ok(file) => {
                let old = std::mem::replace(&mut appender.file, file);
                appender.to_sync.push(old);
                appender.segment = next;
                appender.segment_bytes = 0;
                self.active_segment.store(next, Ordering::Release);
            }
            // The current segment grows on; the next append tries again.
            Err(err) => tracing::error!(error = %err, "cannot start a new spool segment"),
        }
    }

    /// Syncs appended lines to disk until shutdown, one `fdatasync` for every line appended
    /// since the last one; then syncs once more.
    pub async fn run_syncer(self: Arc<Spool>, shutdown: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = self.syncer_wake.notified() => false,
                () = shutdown.cancelled() => true,
            };
            let taken = {
                let mut appender = self.appender.lock().unwrap_or_else(|p| p.into_inner());
                let file = appender.file.try_clone();
                file.map(|file| {
                    (
                        file,
                        appender.appended,
                        std::mem::take(&mut appender.to_sync),
                    )
                })
            };
            let synced = match taken {
                Ok((file, upto, old)) => tokio::task::spawn_blocking(move || {
                    old.iter()
                        .chain([&file])
                        .try_for_each(File::sync_data)
                        .map(|()| upto)
                })
                .await
                .unwrap_or_else(|join| Err(io::Error::other(join))),
                Err(err) => Err(err),
            };
            match synced {
                Ok(upto) => {
                    self.synced.send_if_modified(|synced| {
                        let raised = upto > *synced;
                        *synced = (*synced).max(upto);
                        raised
                    });
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot sync the job spool; trying again");
                    self.syncer_wake.notify_one();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Waits for the next append (or one made since the last wait).
    pub async fn appended(&self) {
        self.writer_wake.notified().await;
    }
}

impl SpoolReader {
    /// Reads up to `max` jobs from where the last batch ended. Blocking file I/O: run it off
    /// the runtime's threads.
    pub fn read_batch(&mut self, spool: &Spool, max: usize) -> io::Result<SpoolBatch> {
        let mut batch = SpoolBatch {
            requests: Vec::new(),
            segment: self.segment,
            offset: self.offset,
            bytes: 0,
            finished: Vec::new(),
        };
        let mut consumed = 0usize;
        loop {
            while batch.requests.len() < max {
                let Some(newline) = memchr::memchr(b'\n', &self.pending[consumed..]) else {
                    break;
                };
                let line = &self.pending[consumed..consumed + newline];
                match serde_json::from_slice::<JobRequest>(line) {
                    Ok(request) => batch.requests.push(request),
                    Err(err) => {
                        spool.metrics.job_outcome("unreadable_in_spool");
                        tracing::error!(segment = self.segment, error = %err, "skipped an unreadable spool line");
                    }
                }
                consumed += newline + 1;
            }
            if batch.requests.len() >= max {
                break;
            }
            // Whether the appender had left this segment before this read: then its end is final.
            let left = spool.active_segment.load(Ordering::Acquire) > self.segment;
            self.pending.drain(..consumed);
            self.offset += consumed as u64;
            batch.bytes += consumed as u64;
            consumed = 0;
            if self.read_more()? > 0 {
                continue;
            }
            if !left {
                break;
            }
            if !self.pending.is_empty() {
                spool.metrics.job_outcome("unreadable_in_spool");
                tracing::error!(
                    segment = self.segment,
                    bytes = self.pending.len(),
                    "skipped a spool line torn by a crash"
                );
                batch.bytes += self.pending.len() as u64;
            }
            batch.finished.push(self.segment);
            self.segment = next_segment(&self.dir, self.segment)?;
            self.offset = 0;
            self.pending.clear();
            self.file = None;
        }
        self.pending.drain(..consumed);
        self.offset += consumed as u64;
        batch.bytes += consumed as u64;
        batch.segment = self.segment;
        batch.offset = self.offset;
        Ok(batch)
    }

    /// Records that `batch` is in the database: moves the cursor, deletes finished segments.
    pub fn commit(&mut self, spool: &Spool, batch: &SpoolBatch) -> io::Result<()> {
        let line = format!("{:020} {:020}\n", batch.segment, batch.offset);
        self.cursor.write_all_at(line.as_bytes(), 0)?;
        for segment in &batch.finished {
            match fs::remove_file(segment_path(&self.dir, *segment)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        let before = spool
            .pending_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                Some(pending.saturating_sub(batch.bytes))
            })
            .unwrap_or(0);
        spool
            .metrics
            .job_spool_bytes(before.saturating_sub(batch.bytes));
        Ok(())
    }

    /// Reads what follows `pending` in the current segment; 0 at its end.
    fn read_more(&mut self) -> io::Result<usize> {
        if self.file.is_none() {
            let mut file = match File::open(segment_path(&self.dir, self.segment)) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(err) => return Err(err),
            };
            file.seek(SeekFrom::Start(self.offset + self.pending.len() as u64))?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let start = self.pending.len();
        self.pending.resize(start + READ_BYTES, 0);
        let read = file.read(&mut self.pending[start..]);
        self.pending.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }
}

impl SpoolBatch {
    /// Whether the batch holds no job (it may still finish segments or skip torn lines).
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Whether committing it would change anything.
    pub fn moves(&self) -> bool {
        self.bytes > 0 || !self.finished.is_empty()
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

fn create_segment(dir: &Path, segment: u64) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(segment_path(dir, segment))
}

/// The segment numbers in `dir`, lowest first.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|number| number.parse().ok())
        else {
            continue;
        };
        found.push(number);
    }
    found.sort_unstable();
    Ok(found)
}

/// The segment after `segment`: the next number, or the lowest higher one on disk.
fn next_segment(dir: &Path, segment: u64) -> io::Result<u64> {
    if segment_path(dir, segment + 1).exists() {
        return Ok(segment + 1);
    }
    Ok(segments(dir)?
        .into_iter()
        .find(|s| *s > segment)
        .unwrap_or(segment + 1))
}

fn read_cursor(mut cursor: &File) -> Option<(u64, u64)> {
    let mut text = String::new();
    cursor.read_to_string(&mut text).ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Some((segment, offset)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
