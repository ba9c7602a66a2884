use super::*;
use crate::job::Work;

fn job(n: usize) -> JobRequest {
    JobRequest {
        user: "alice".into(),
        trigger: None,
        key: format!("k{n}"),
        work: Work::Sms {
            number: None,
            text: format!("text {n}"),
        },
    }
}

fn keys(batch: &SpoolBatch) -> Vec<String> {
    batch.requests.iter().map(|r| r.key.clone()).collect()
}

fn open(dir: &Path) -> (Arc<Spool>, SpoolReader) {
    Spool::open(dir, 1 << 30, Arc::new(Metrics::new())).unwrap()
}

#[test]
fn jobs_come_back_in_order_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader) = open(dir.path());
    for n in 0..5 {
        spool.append(&job(n)).unwrap();
    }
    let batch = reader.read_batch(&spool, 3).unwrap();
    assert_eq!(keys(&batch), ["k0", "k1", "k2"]);
    reader.commit(&spool, &batch).unwrap();
    // The process dies here: k3 and k4 were read by nobody.
    drop((spool, reader));
    let (spool, mut reader) = open(dir.path());
    spool.append(&job(5)).unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = reader.read_batch(&spool, 100).unwrap();
        if !batch.moves() {
            break;
        }
        seen.extend(keys(&batch));
        reader.commit(&spool, &batch).unwrap();
    }
    assert_eq!(seen, ["k3", "k4", "k5"]);
    assert_eq!(spool.pending_bytes(), 0);
    assert_eq!(
        segments(dir.path()).unwrap().len(),
        1,
        "drained segments are deleted; the active one stays"
    );
}

#[test]
fn a_torn_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, reader) = open(dir.path());
    spool.append(&job(0)).unwrap();
    drop((spool, reader));
    let first = segments(dir.path()).unwrap()[0];
    let mut file = OpenOptions::new()
        .append(true)
        .open(segment_path(dir.path(), first))
        .unwrap();
    file.write_all(br#"{"user":"alice","key":"#).unwrap();
    let (spool, mut reader) = open(dir.path());
    spool.append(&job(1)).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let batch = reader.read_batch(&spool, 100).unwrap();
        seen.extend(keys(&batch));
        reader.commit(&spool, &batch).unwrap();
    }
    assert_eq!(seen, ["k0", "k1"]);
}

#[test]
fn a_full_spool_refuses_and_frees_as_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::to_vec(&job(0)).unwrap().len() as u64 + 1;
    let (spool, mut reader) = Spool::open(dir.path(), line * 2, Arc::new(Metrics::new())).unwrap();
    spool.append(&job(0)).unwrap();
    spool.append(&job(1)).unwrap();
    assert!(matches!(
        spool.append(&job(2)),
        Err(SpoolError::Full { .. })
    ));
    let batch = reader.read_batch(&spool, 1).unwrap();
    reader.commit(&spool, &batch).unwrap();
    spool.append(&job(3)).unwrap();
}

#[test]
fn segments_rotate_and_are_read_across() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, mut reader) = open(dir.path());
    let big = JobRequest {
        work: Work::Sms {
            number: None,
            text: "x".repeat(600 << 10),
        },
        ..job(0)
    };
    let count = 2 * (SEGMENT_BYTES / (600 << 10)) as usize;
    for n in 0..count {
        spool
            .append(&JobRequest {
                key: format!("k{n}"),
                ..big.clone()
            })
            .unwrap();
    }
    assert!(segments(dir.path()).unwrap().len() >= 2);
    let mut seen = 0;
    while seen < count {
        let batch = reader.read_batch(&spool, 7).unwrap();
        assert!(batch.moves(), "stuck after {seen}");
        seen += batch.requests.len();
        reader.commit(&spool, &batch).unwrap();
    }
    assert_eq!(segments(dir.path()).unwrap().len(), 1);
}

#[tokio::test]
async fn durable_waits_for_the_syncer() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _reader) = open(dir.path());
    let cancel = CancellationToken::new();
    let syncer = tokio::spawn(spool.clone().run_syncer(cancel.clone()));
    let ticket = spool.append(&job(0)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), spool.wait_durable(ticket))
        .await
        .expect("synced");
    assert!(*spool.synced.borrow() >= 1);
    cancel.cancel();
    syncer.await.unwrap();
}
