//! The delivery journal: what a crash must not make the queue send twice.
//!
//! SMTP commits a message when the relay reads the final `.`; the queue commits it when the
//! job is marked done, a moment later. A process killed in between would leave the job
//! running, and after its lease another worker would send it again. So as it writes the `.`,
//! a worker appends `<job id> <attempt>` to this file (one `write`, no fsync: the page cache
//! outlives the process, and a power cut loses the whole machine's recent state anyway). At
//! start-up, before any worker claims a job, every job still running in the attempt the
//! journal names is marked done: its message reached the relay.
//!
//! The `.` is written into the corked socket first, then the record, then the socket sends
//! the `.` (`smtp/gate.rs`): a socket's kernel sends what it holds when its process dies, so
//! a journaled message always reached the relay. A crash between the `.` and the record sends
//! the message again after the lease; the other order would mark done a message that never
//! left, and a lost email is worse than a second one.
//!
//! This file belongs to one data dir. Nodes sharing a PostgreSQL database journal in the
//! job's row instead (`jobs.sent_attempt`, written with the `.` in the same way), so the node
//! that takes over a dead node's job after its lease finds it and marks it done. There the
//! record is a query: the `.` goes once its request is written to the database's socket (the
//! database runs a query it received even if the sender dies), and its answer is read after
//! the relay's. `Journal` is the workers' side: which of the two a node records in, and when.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::smtp::Commit;
use crate::store::{JournalPool, Store};

/// The journal is rotated past this size; the previous file is kept one rotation longer.
const ROTATE_BYTES: u64 = 1 << 20;

/// An append-only record of messages whose final `.` was written.
pub struct DeliveryJournal {
    path: PathBuf,
    current: Mutex<Current>,
}

struct Current {
    file: File,
    bytes: u64,
}

impl DeliveryJournal {
    /// Opens (or creates) the journal at `path`, appending.
    pub fn open(path: &Path) -> std::io::Result<DeliveryJournal> {
        if let Some(dir) = path.parent() {
            // On PostgreSQL nothing else may have made the data dir yet.
            crate::files::create_private_dir(dir)?;
        }
        let file = append(path)?;
        let bytes = file.metadata()?.len();
        Ok(DeliveryJournal {
            path: path.to_owned(),
            current: Mutex::new(Current { file, bytes }),
        })
    }

    /// Records that the final `.` of `job`'s `attempt` is in the relay's socket. Never fails
    /// the send: a journal that cannot be written is logged, and a crash at that moment would
    /// send the message again, as without a journal.
    pub fn record(&self, job: i64, attempt: i64) {
        let line = format!("{job} {attempt}\n");
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = current.file.write_all(line.as_bytes()) {
            tracing::error!(error = %err, path = %self.path.display(), "cannot write the delivery journal");
            return;
        }
        current.bytes += line.len() as u64;
        if current.bytes > ROTATE_BYTES {
            // An entry only matters while its job is running: by the next rotation every job
            // of the previous file has long been marked done or retried.
            let rotated =
                std::fs::rename(&self.path, previous(&self.path)).and_then(|()| append(&self.path));
            match rotated {
                Ok(file) => *current = Current { file, bytes: 0 },
                Err(err) => {
                    tracing::error!(error = %err, path = %self.path.display(), "cannot rotate the delivery journal");
                }
            }
        }
    }

    /// The `(job, attempt)` pairs in the journal and its previous file.
    pub fn entries(&self) -> std::io::Result<Vec<(i64, i64)>> {
        let mut entries = Vec::new();
        for file in [previous(&self.path), self.path.clone()] {
            let reader = match File::open(&file) {
                Ok(reader) => BufReader::new(reader),
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            for line in reader.lines() {
                // A line cut short by the crash itself has no attempt and is skipped.
                let line = line?;
                let mut fields = line.split(' ').map(str::parse::<i64>);
                if let (Some(Ok(job)), Some(Ok(attempt)), None) =
                    (fields.next(), fields.next(), fields.next())
                {
                    entries.push((job, attempt));
                }
            }
        }
        Ok(entries)
    }

    /// Empties the journal once its entries have been applied.
    pub fn clear(&self) -> std::io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::remove_file(previous(&self.path)) {
            Err(err) if err.kind() != ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        current.file.set_len(0)?;
        current.bytes = 0;
        Ok(())
    }

    /// Where the journal is, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where a worker records that a message's final `.` went out.
pub(super) enum Journal {
    /// A lone node: a file in its data dir, applied at its next start.
    File(Arc<DeliveryJournal>),
    /// Nodes sharing PostgreSQL: the job's row, which the worker taking it over reads. The
    /// file is kept for what an older run on this data dir left in it.
    Database(JournalPool, Arc<DeliveryJournal>),
}

/// How long the database may take to give a connection for, or to record, a delivery.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(2);

impl Journal {
    /// The journal for `workers` workers of a node on `store`: nodes sharing PostgreSQL
    /// journal there, so whichever takes a dead node's job over sees what it delivered; a lone
    /// node on SQLite in `file`.
    pub(super) fn new(store: &Store, workers: usize, file: DeliveryJournal) -> Journal {
        let size = u32::try_from(workers).unwrap_or(u32::MAX);
        match store.journal_pool(size) {
            Some(pool) => Journal::Database(pool, Arc::new(file)),
            None => Journal::File(Arc::new(file)),
        }
    }

    /// Gets ready to record that `attempt` of `job` is committed at the relay; the relay's
    /// connection runs the record as it writes the final `.`. Never fails the send: a record
    /// that cannot be made is logged, and a crash at that moment would send the message again,
    /// as with no journal.
    pub(super) async fn commit(&self, job: i64, attempt: i64) -> Commit {
        let pool = match self {
            Journal::File(file) => {
                let file = file.clone();
                return Commit {
                    record: Box::pin(async move { file.record(job, attempt) }),
                    sent: Arc::default(),
                };
            }
            Journal::Database(pool, _) => pool,
        };
        let connection = match tokio::time::timeout(JOURNAL_TIMEOUT, pool.connection()).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                tracing::error!(job, error = %err, "cannot journal the delivery; sending anyway");
                return Commit::done();
            }
            Err(_) => {
                tracing::error!(
                    job,
                    "no database connection to journal the delivery in 2 s; sending anyway"
                );
                return Commit::done();
            }
        };
        let sent = Arc::new(AtomicBool::new(false));
        let flag = sent.clone();
        let record = async move {
            match tokio::time::timeout(JOURNAL_TIMEOUT, connection.record(job, attempt, &flag))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(job, error = %err, "the database did not journal the delivery")
                }
                Err(_) => tracing::error!(job, "the database did not journal the delivery in 2 s"),
            }
        };
        Commit {
            record: Box::pin(record),
            sent,
        }
    }

    /// The file journal.
    pub(super) fn file(&self) -> &DeliveryJournal {
        match self {
            Journal::File(file) | Journal::Database(_, file) => file,
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    crate::files::open_private_append(path)
}

fn previous(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/delivery.journal");
        let journal = DeliveryJournal::open(&path).unwrap();
        journal.record(7, 1);
        journal.record(9, 3);
        drop(journal);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"12")
            .unwrap();
        let journal = DeliveryJournal::open(&path).unwrap();
        assert_eq!(
            journal.entries().unwrap(),
            [(7, 1), (9, 3)],
            "the torn last line is skipped"
        );
        journal.clear().unwrap();
        assert!(journal.entries().unwrap().is_empty());
        journal.record(11, 1);
        assert_eq!(
            journal.entries().unwrap(),
            [(11, 1)],
            "appends after a clear"
        );
    }

    #[test]
    fn rotation_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.journal");
        let journal = DeliveryJournal::open(&path).unwrap();
        let lines = ROTATE_BYTES / 10 + 10;
        for job in 0..i64::try_from(lines).unwrap() {
            journal.record(1_000_000 + job, 1);
        }
        assert!(previous(&path).exists());
        let entries = journal.entries().unwrap();
        assert_eq!(entries.len() as u64, lines);
        assert_eq!(entries.last(), Some(&(1_000_000 + lines as i64 - 1, 1)));
        journal.clear().unwrap();
        assert!(!previous(&path).exists());
    }
}
