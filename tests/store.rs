//! The device store's contract, run against SQLite always and against PostgreSQL when
//! `MAILPUSH_TEST_PG_URL` names a server (CI sets it; `cargo test -- --ignored` runs it).

mod common;

use std::str::FromStr;

use mailpush::store::{
    Claim, DeviceError, Environment, JobResult, JobState, NewDevice, NewJob, PayloadFormat,
    Platform, Store, StoredState, Upserted, UserUpdate, WebPushKeys,
};
use sqlx::postgres::PgConnectOptions;

fn new_device(user: &str, token: &str) -> NewDevice {
    NewDevice {
        user_id: user.into(),
        platform: Platform::Apns,
        token: token.into(),
        app: "com.example.mail".into(),
        environment: Environment::Sandbox,
        webpush: None,
    }
}

async fn contract(store: &Store) {
    let created = match store
        .upsert_device(&new_device("alice", "aa"), 100, 2)
        .await
        .unwrap()
    {
        Upserted::Created(device) => device,
        other => panic!("expected a new device, got {other:?}"),
    };
    assert_eq!((created.created_at, created.registered_at), (100, 100));
    assert_eq!(created.environment, Environment::Sandbox);
    // The same token again refreshes the registration time and keeps the id.
    match store
        .upsert_device(&new_device("alice", "aa"), 200, 2)
        .await
        .unwrap()
    {
        Upserted::Updated {
            device,
            moved_from: None,
        } => {
            assert_eq!(
                (device.id, device.created_at, device.registered_at),
                (created.id, 100, 200)
            );
        }
        other => panic!("expected a refresh, got {other:?}"),
    }
    // The same token string on another platform is another device.
    let fcm = NewDevice {
        platform: Platform::Fcm,
        environment: Environment::Production,
        ..new_device("alice", "aa")
    };
    assert!(matches!(
        store.upsert_device(&fcm, 200, 2).await.unwrap(),
        Upserted::Created(_)
    ));
    assert!(matches!(
        store
            .upsert_device(&new_device("alice", "bb"), 200, 2)
            .await,
        Err(DeviceError::Limit(2))
    ));

    // Moving to bob.
    match store
        .upsert_device(&new_device("bob", "aa"), 300, 2)
        .await
        .unwrap()
    {
        Upserted::Updated { device, moved_from } => {
            assert_eq!(device.user_id, "bob");
            assert_eq!(moved_from.as_deref(), Some("alice"));
        }
        other => panic!("expected a move, got {other:?}"),
    }
    assert_eq!(store.devices_of("alice").await.unwrap().len(), 1);
    assert_eq!(store.devices_of("bob").await.unwrap().len(), 1);
    assert_eq!(store.all_devices().await.unwrap().len(), 2);

    // A provider's "dead since 250" does not remove a token registered again at 300...
    assert_eq!(
        store
            .remove_dead_token(Platform::Apns, "aa", Some(250), "Unregistered", 400)
            .await
            .unwrap(),
        None
    );
    // ...but "dead since 350" does, and the removal is recorded.
    let removed = store
        .remove_dead_token(Platform::Apns, "aa", Some(350), "Unregistered", 400)
        .await
        .unwrap();
    assert_eq!(removed.map(|d| d.user_id), Some("bob".into()));
    assert_eq!(
        store.removals_of("bob").await.unwrap(),
        vec![("aa".to_owned(), "Unregistered".to_owned())]
    );
    assert!(store.devices_of("bob").await.unwrap().is_empty());

    // Users delete only their own devices.
    let alice_fcm = store.devices_of("alice").await.unwrap().remove(0);
    assert_eq!(
        store.delete_device("bob", alice_fcm.id, 500).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_device("alice", alice_fcm.id, 500)
            .await
            .unwrap(),
        Some(alice_fcm)
    );
    assert!(store.all_devices().await.unwrap().is_empty());

    // A Web Push subscription keeps its keys and format; registering it again replaces them.
    let keys = |p256dh: &str, format| WebPushKeys {
        p256dh: p256dh.into(),
        auth: "auth-secret".into(),
        format,
    };
    let endpoint = "https://push.example/send/abc";
    let subscription = NewDevice {
        user_id: "alice".into(),
        platform: Platform::WebPush,
        token: endpoint.into(),
        app: "web".into(),
        environment: Environment::Production,
        webpush: Some(keys("key-1", PayloadFormat::Legacy)),
    };
    assert!(matches!(
        store.upsert_device(&subscription, 600, 2).await.unwrap(),
        Upserted::Created(_)
    ));
    let again = NewDevice {
        webpush: Some(keys("key-2", PayloadFormat::Jmap)),
        ..subscription
    };
    store.upsert_device(&again, 700, 2).await.unwrap();
    let stored = store.all_devices().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].platform, Platform::WebPush);
    assert_eq!(stored[0].token, endpoint);
    assert_eq!(stored[0].webpush, Some(keys("key-2", PayloadFormat::Jmap)));
    store.ping().await.unwrap();
}

fn job(user: &str, kind: &str, key: &str) -> NewJob {
    NewJob {
        user_id: user.into(),
        kind: kind.into(),
        payload: "{}".into(),
        key: key.into(),
    }
}

/// The job queue's contract: idempotent inserts, due order, leases, retries, dead jobs, credit.
async fn jobs_contract(store: &Store) {
    let inserted = store
        .insert_jobs(
            &[
                job("alice", "sieve_email", "k1"),
                job("alice", "sieve_email", "k2"),
                job("alice", "sieve_email", "k1"),
            ],
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(inserted, 2, "a known key is not inserted twice");
    assert_eq!(
        store
            .insert_jobs(&[job("alice", "sieve_email", "k2")], 1_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.next_job_due().await.unwrap(), Some(1_000));
    assert_eq!(
        store.claim_job(999, 100).await.unwrap(),
        None,
        "nothing is due before run_at"
    );

    let Some(Claim::Job(first)) = store.claim_job(1_000, 100).await.unwrap() else {
        panic!("a due job")
    };
    assert_eq!(
        (first.key.as_str(), first.attempts, first.state),
        ("k1", 1, JobState::Running)
    );
    let Some(Claim::Job(second)) = store.claim_job(1_000, 100).await.unwrap() else {
        panic!("a second job")
    };
    assert_eq!(second.key, "k2");
    assert_eq!(
        store.claim_job(1_050, 100).await.unwrap(),
        None,
        "both are leased"
    );
    // The worker holding k1 died: after its lease, k1 is claimed again.
    let Some(Claim::Job(again)) = store.claim_job(1_100, 100).await.unwrap() else {
        panic!("an expired lease")
    };
    assert_eq!((again.id, again.attempts), (first.id, 2));

    store.retry_job_at(again.id, 5_000, "503").await.unwrap();
    store.finish_job(second.id, 1_200).await.unwrap();
    assert_eq!(store.next_job_due().await.unwrap(), Some(5_000));
    let Some(Claim::Job(third)) = store.claim_job(5_000, 100).await.unwrap() else {
        panic!("the retry")
    };
    assert_eq!(
        (third.attempts, third.last_error.as_deref()),
        (3, Some("503"))
    );
    store.bury_job(third.id, "gave up", 5_050).await.unwrap();
    let dead = store.jobs(Some(JobState::Dead), 10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|j| (j.id, j.last_error.clone()))
            .collect::<Vec<_>>(),
        [(third.id, Some("gave up".to_owned()))]
    );
    assert_eq!(store.jobs(Some(JobState::Done), 10).await.unwrap().len(), 1);
    assert_eq!(store.jobs(None, 10).await.unwrap().len(), 2);
    assert!(store.requeue_job(third.id, 6_000).await.unwrap());
    assert!(
        !store.requeue_job(second.id, 6_000).await.unwrap(),
        "only dead jobs are requeued"
    );
    let Some(Claim::Job(requeued)) = store.claim_job(6_000, 100).await.unwrap() else {
        panic!("requeued")
    };
    assert_eq!(requeued.attempts, 1);
    store.finish_job(requeued.id, 6_001).await.unwrap();

    // SMS credit: taken in the claim, once per job, never below zero.
    store
        .set_user(
            "bob",
            &UserUpdate {
                sms_credit: Some(1),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    store
        .insert_jobs(&[job("bob", "sms", "s1"), job("bob", "sms", "s2")], 7_000)
        .await
        .unwrap();
    let Some(Claim::Job(paid)) = store.claim_job(7_000, 100).await.unwrap() else {
        panic!("paid sms")
    };
    let Some(Claim::NoCredit(unpaid)) = store.claim_job(7_000, 100).await.unwrap() else {
        panic!("no credit")
    };
    assert_eq!((paid.key.as_str(), unpaid.key.as_str()), ("s1", "s2"));
    assert_eq!(store.user("bob").await.unwrap().sms_credit, 0);
    // A retry of a paid job does not pay again.
    store.retry_job_at(paid.id, 7_000, "timeout").await.unwrap();
    let Some(Claim::Job(retried)) = store.claim_job(7_000, 100).await.unwrap() else {
        panic!("the paid retry")
    };
    assert_eq!(store.user("bob").await.unwrap().sms_credit, 0);
    store.finish_job(retried.id, 7_050).await.unwrap();
    let user = store.user("nobody").await.unwrap();
    assert_eq!((user.language.as_str(), user.sms_credit), ("en", 0));
}

/// Which due job a claim takes when a queued job and an expired lease are both due: the one
/// that fell due first, whichever kind it is. Leaves no job queued or running.
async fn due_order_contract(store: &Store) {
    store
        .insert_jobs(&[job("carol", "sieve_email", "o1")], 10_000)
        .await
        .unwrap();
    let Some(Claim::Job(leased)) = store.claim_job(10_000, 100).await.unwrap() else {
        panic!("o1 is due")
    };
    store
        .insert_jobs(&[job("carol", "sieve_email", "o2")], 10_050)
        .await
        .unwrap();
    // o1's lease ran out at 10,100; it fell due at 10,000, before o2.
    let Some(Claim::Job(first)) = store.claim_job(10_200, 100).await.unwrap() else {
        panic!("two jobs are due")
    };
    assert_eq!((first.key.as_str(), first.attempts), ("o1", 2));
    let Some(Claim::Job(second)) = store.claim_job(10_200, 100).await.unwrap() else {
        panic!("o2 is still due")
    };
    assert_eq!(second.key, "o2");
    assert_eq!(leased.id, first.id);

    store.finish_job(first.id, 10_250).await.unwrap();
    store.finish_job(second.id, 10_250).await.unwrap();

    // Now the queued job fell due first: o4 was written with a due time before o3's.
    store
        .insert_jobs(&[job("carol", "sieve_email", "o3")], 20_000)
        .await
        .unwrap();
    let Some(Claim::Job(o3)) = store.claim_job(20_000, 100).await.unwrap() else {
        panic!("o3 is due")
    };
    store
        .insert_jobs(&[job("carol", "sieve_email", "o4")], 19_500)
        .await
        .unwrap();
    let Some(Claim::Job(queued)) = store.claim_job(20_200, 100).await.unwrap() else {
        panic!("two jobs are due")
    };
    assert_eq!(queued.key, "o4", "due at 19,500, before o3 at 20,000");
    let Some(Claim::Job(expired)) = store.claim_job(20_200, 100).await.unwrap() else {
        panic!("o3's lease ran out")
    };
    assert_eq!((expired.id, expired.attempts), (o3.id, 2));
    store.finish_job(queued.id, 20_250).await.unwrap();
    store.finish_job(expired.id, 20_250).await.unwrap();
    assert_eq!(store.claim_job(99_000, 100).await.unwrap(), None);
}

/// Claims and results in batches: a batch claim takes the jobs that fell due first, as many as
/// asked and each once; a batch of results records each job's own outcome.
async fn batch_contract(store: &Store) {
    // One key twice in one batch, and a key already stored: one job each.
    let twice = [
        job("dave", "sieve_email", "t1"),
        job("dave", "sieve_email", "t1"),
    ];
    assert_eq!(store.insert_jobs(&twice, 150_000).await.unwrap(), 1);
    assert_eq!(store.insert_jobs(&twice[..1], 150_000).await.unwrap(), 0);
    let Some(Claim::Job(t1)) = store.claim_job(150_000, 100).await.unwrap() else {
        panic!("t1 is due")
    };
    store.finish_job(t1.id, 150_050).await.unwrap();
    assert_eq!(store.claim_job(199_999, 100).await.unwrap(), None);

    for (n, at) in (200_000..200_005).enumerate() {
        store
            .insert_jobs(&[job("dave", "sieve_email", &format!("b{n}"))], at)
            .await
            .unwrap();
    }
    let keys = |claims: &[Claim]| -> Vec<String> {
        claims
            .iter()
            .map(|claim| match claim {
                Claim::Job(job) => job.key.clone(),
                other => panic!("a plain job: {other:?}"),
            })
            .collect()
    };
    let first = store.claim_jobs(201_000, 100, 3).await.unwrap();
    assert_eq!(
        keys(&first),
        ["b0", "b1", "b2"],
        "the three due first, in order"
    );
    let rest = store.claim_jobs(201_000, 100, 10).await.unwrap();
    assert_eq!(keys(&rest), ["b3", "b4"], "no more than are due");
    assert!(store.claim_jobs(201_000, 100, 10).await.unwrap().is_empty());

    // Every lease ran out at 201,100; b5, written at 201,150, fell due after all of them.
    store
        .insert_jobs(&[job("dave", "sieve_email", "b5")], 201_150)
        .await
        .unwrap();
    let again = store.claim_jobs(201_200, 1_000, 2).await.unwrap();
    assert_eq!(keys(&again), ["b0", "b1"], "expired leases in due order");
    let id = |claims: &[Claim], n: usize| match &claims[n] {
        Claim::Job(job) => job.id,
        other => panic!("a plain job: {other:?}"),
    };
    let results = [
        (id(&again, 0), JobResult::Done),
        (
            id(&again, 1),
            JobResult::Retry {
                run_at_ms: 300_000,
                error: "451 try later".into(),
            },
        ),
        (
            id(&first, 2),
            JobResult::Dead {
                error: "550 no such user".into(),
            },
        ),
    ];
    store.record_results(&results, 201_300).await.unwrap();
    let jobs = store.jobs(None, 100).await.unwrap();
    let find = |key: &str| jobs.iter().find(|job| job.key == key).unwrap().clone();
    let b0 = find("b0");
    assert_eq!(
        (b0.state, b0.finished_at, b0.last_error),
        (JobState::Done, Some(201_300), None)
    );
    let b1 = find("b1");
    assert_eq!(
        (b1.state, b1.run_at, b1.last_error.as_deref()),
        (JobState::Queued, 300_000, Some("451 try later"))
    );
    let b2 = find("b2");
    assert_eq!(
        (b2.state, b2.finished_at, b2.last_error.as_deref()),
        (JobState::Dead, Some(201_300), Some("550 no such user"))
    );

    // b3 and b4 (leases run out) and b5, then b1 once it is due again.
    let later = store.claim_jobs(250_000, 100, 10).await.unwrap();
    assert_eq!(keys(&later), ["b3", "b4", "b5"]);
    let done: Vec<_> = (0..3).map(|n| (id(&later, n), JobResult::Done)).collect();
    store.record_results(&done, 250_050).await.unwrap();
    let last = store.claim_jobs(300_000, 100, 10).await.unwrap();
    assert_eq!(keys(&last), ["b1"]);
    store
        .record_results(&[(id(&last, 0), JobResult::Done)], 300_050)
        .await
        .unwrap();
    assert!(store.claim_jobs(999_999, 100, 10).await.unwrap().is_empty());

    // Jobs claimed ahead and given back are queued again, due as they were, their claim's
    // attempt undone; a claim that no longer holds its job (another attempt) gives nothing.
    let ahead = [
        job("dave", "sieve_email", "r0"),
        job("dave", "sieve_email", "r1"),
    ];
    store.insert_jobs(&ahead, 400_000).await.unwrap();
    let claimed = store.claim_jobs(400_500, 100, 10).await.unwrap();
    assert_eq!(keys(&claimed), ["r0", "r1"]);
    let (r0, r1) = (id(&claimed, 0), id(&claimed, 1));
    assert_eq!(store.release_jobs(&[(r0, 1), (r1, 2)]).await.unwrap(), 1);
    let jobs = store.jobs(None, 100).await.unwrap();
    let find = |key: &str| jobs.iter().find(|job| job.key == key).unwrap().clone();
    let given_back = find("r0");
    assert_eq!(
        (given_back.state, given_back.attempts, given_back.run_at),
        (JobState::Queued, 0, 400_000)
    );
    assert_eq!(find("r1").state, JobState::Running);
    let again = store.claim_jobs(400_550, 100, 10).await.unwrap();
    assert_eq!(keys(&again), ["r0"], "r1's lease holds until 400,600");
    let Claim::Job(r0_again) = &again[0] else {
        unreachable!("checked above")
    };
    assert_eq!(
        r0_again.attempts, 1,
        "the attempt given back is not counted"
    );
    store
        .record_results(&[(r0, JobResult::Done), (r1, JobResult::Done)], 400_650)
        .await
        .unwrap();

    // More jobs than one statement takes: several statements, one transaction; a key met in
    // an earlier statement of the batch is still one job.
    let mut many: Vec<NewJob> = (0..600)
        .map(|n| job("dave", "sieve_email", &format!("m{n}")))
        .collect();
    many.push(job("dave", "sieve_email", "m0"));
    assert_eq!(store.insert_jobs(&many, 1_000_000).await.unwrap(), 600);
    let claimed = store.claim_jobs(1_000_000, 100, 1_000).await.unwrap();
    assert_eq!(keys(&claimed).len(), 600);
    let done: Vec<_> = (0..600)
        .map(|n| (id(&claimed, n), JobResult::Done))
        .collect();
    store.record_results(&done, 1_000_050).await.unwrap();
    assert!(
        store
            .claim_jobs(9_999_999, 100, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Users' states: writes only raise each value, in one batch of many users too.
async fn states_contract(store: &Store) {
    let state = |mail, calendar, contacts| StoredState {
        mail,
        calendar,
        contacts,
        delivered: mail,
        id_scheme: 0,
    };
    assert_eq!(store.user_state("alice").await.unwrap(), None);
    store
        .save_user_states(&[("alice".into(), state(6, 71, 3))], 1)
        .await
        .unwrap();
    // An older write (another node, a replay) lowers nothing; a newer one raises each value.
    store
        .save_user_states(&[("alice".into(), state(5, 80, 0))], 2)
        .await
        .unwrap();
    assert_eq!(
        store.user_state("alice").await.unwrap(),
        Some(state(6, 80, 3))
    );
    // The id scheme, once known, is kept by writes that do not know it.
    let compact = StoredState {
        id_scheme: 2,
        ..state(9, 80, 3)
    };
    store
        .save_user_states(&[("alice".into(), compact)], 3)
        .await
        .unwrap();
    store
        .save_user_states(&[("alice".into(), state(10, 80, 3))], 4)
        .await
        .unwrap();
    assert_eq!(
        store
            .user_state("alice")
            .await
            .unwrap()
            .map(|s| (s.mail, s.id_scheme)),
        Some((10, 2))
    );
    let many: Vec<(String, StoredState)> = (0..1200)
        .map(|n| (format!("user{n}"), state(n, 0, 0)))
        .collect();
    store.save_user_states(&many, 3).await.unwrap();
    assert_eq!(
        store.user_state("user1199").await.unwrap(),
        Some(state(1199, 0, 0))
    );
}

#[tokio::test]
async fn sqlite_states_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(None, &dir.path().join("mailpush.db"))
        .await
        .unwrap();
    states_contract(&store).await;
}

#[tokio::test]
async fn sqlite_jobs_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(None, &dir.path().join("mailpush.db"))
        .await
        .unwrap();
    jobs_contract(&store).await;
    due_order_contract(&store).await;
    batch_contract(&store).await;
}

#[tokio::test]
async fn sqlite_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(None, &dir.path().join("data/mailpush.db"))
        .await
        .unwrap();
    contract(&store).await;
    // Migrations are idempotent: opening the same file again works.
    drop(store);
    let again = Store::connect(None, &dir.path().join("data/mailpush.db"))
        .await
        .unwrap();
    let kept = again.all_devices().await.unwrap();
    assert_eq!(kept.len(), 1, "the Web Push subscription, with its keys");
    assert!(kept[0].webpush.is_some());
}

/// Migration 0005 rebuilds SQLite's `devices` table (a CHECK cannot be altered): the devices
/// registered before it are all still there afterwards, with their ids.
#[tokio::test]
async fn sqlite_devices_survive_the_web_push_migration() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before-0005");
    std::fs::create_dir(&before).unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, before.join(name)).unwrap();
        }
    }
    let file = dir.path().join("mailpush.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for (user, token) in [("alice", "aa"), ("bob", "bb")] {
        sqlx::query(
            "INSERT INTO devices (user_id, platform, token, app, environment, created_at, registered_at) \
             VALUES ($1, 'apns', $2, 'com.example.mail', 'sandbox', 1, 2)",
        )
        .bind(user)
        .bind(token)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let store = Store::connect(None, &file).await.unwrap();
    let devices = store.all_devices().await.unwrap();
    let kept: Vec<(i64, &str, &str)> = devices
        .iter()
        .map(|d| (d.id, d.user_id.as_str(), d.token.as_str()))
        .collect();
    assert_eq!(kept, vec![(1, "alice", "aa"), (2, "bob", "bb")]);
    assert!(
        devices
            .iter()
            .all(|d| d.webpush.is_none() && d.environment == Environment::Sandbox)
    );
    // New rows take ids after the old ones.
    let Upserted::Created(next) = store
        .upsert_device(&new_device("carol", "cc"), 3, 5)
        .await
        .unwrap()
    else {
        panic!("a new device")
    };
    assert_eq!(next.id, 3);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set MAILPUSH_TEST_PG_URL"]
async fn postgres_store_contract() {
    let url = std::env::var("MAILPUSH_TEST_PG_URL").expect("MAILPUSH_TEST_PG_URL");
    // A schema of its own, so runs never see each other's rows.
    let schema = format!(
        "mailpush_test_{}_{}",
        std::process::id(),
        mailpush::auth::unix_now()
    );
    let admin = Store::postgres(PgConnectOptions::from_str(&url).unwrap())
        .await
        .unwrap();
    let Store::Postgres(admin_pool) = &admin else {
        unreachable!("postgres store")
    };
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(admin_pool)
        .await
        .unwrap();
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let store = Store::postgres(options).await.unwrap();
    store.migrate().await.unwrap();
    contract(&store).await;
    jobs_contract(&store).await;
    due_order_contract(&store).await;
    batch_contract(&store).await;
    states_contract(&store).await;
    concurrent_claims(&store).await;
    journal_contract(&store).await;
    store.migrate().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(admin_pool)
        .await
        .unwrap();
}

/// A connection for one delivery record (PostgreSQL only).
async fn journal(store: &Store) -> mailpush::store::JournalConnection {
    let pool = store.journal_pool(1).expect("PostgreSQL");
    pool.connection().await.unwrap()
}

/// The delivery journal in the jobs' rows (nodes sharing PostgreSQL): a job whose lease ran
/// out in the attempt the journal names is done when claimed, not sent again; a retried or
/// requeued job forgets the record of its earlier attempt.
async fn journal_contract(store: &Store) {
    use std::sync::atomic::{AtomicBool, Ordering};
    store
        .insert_jobs(
            &[
                job("dave", "sieve_email", "j1"),
                job("dave", "sieve_email", "j2"),
            ],
            20_000,
        )
        .await
        .unwrap();
    let Some(Claim::Job(sent)) = store.claim_job(20_000, 100).await.unwrap() else {
        panic!("j1")
    };
    let Some(Claim::Job(retried)) = store.claim_job(20_000, 100).await.unwrap() else {
        panic!("j2")
    };
    // j1's worker dies right after the record's first poll, before any answer: the request
    // had left by then, so the record lands all the same.
    let connection = journal(store).await;
    let request_out = AtomicBool::new(false);
    {
        let mut record = std::pin::pin!(connection.record(sent.id, sent.attempts, &request_out));
        let _ = futures_util::poll!(record.as_mut());
    }
    assert!(request_out.load(Ordering::Acquire));
    let Store::Postgres(pool) = store else {
        unreachable!("the journal is PostgreSQL's")
    };
    common::wait_until("j1's record to land", || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT sent_attempt FROM jobs WHERE id = $1")
            .bind(sent.id)
            .fetch_one(pool)
            .await
            .unwrap()
            == Some(sent.attempts)
    })
    .await;
    // j2's record is answered.
    let connection = journal(store).await;
    let request_out = AtomicBool::new(false);
    connection
        .record(retried.id, retried.attempts, &request_out)
        .await
        .unwrap();
    assert!(request_out.load(Ordering::Acquire));
    // j2's relay refused the message after all: it is retried, and its record forgotten.
    store.retry_job_at(retried.id, 20_000, "451").await.unwrap();
    // j1's worker died after the `.`: once the lease runs out, the claim finds it delivered.
    let Some(Claim::Job(again)) = store.claim_job(20_050, 100).await.unwrap() else {
        panic!("the retried j2 comes first")
    };
    assert_eq!((again.id, again.attempts), (retried.id, 2));
    match store.claim_job(20_100, 100).await.unwrap() {
        Some(Claim::Delivered(job)) => {
            assert_eq!((job.id, job.state), (sent.id, JobState::Done));
        }
        other => panic!("expected j1 delivered, got {other:?}"),
    }
    let done = store.jobs(Some(JobState::Done), 100).await.unwrap();
    let j1 = done.iter().find(|job| job.id == sent.id).expect("j1 done");
    assert!(
        j1.last_error
            .as_deref()
            .unwrap_or("")
            .contains("delivery journal"),
        "{j1:?}"
    );
    // A record for an attempt that is not the running one changes nothing.
    let connection = journal(store).await;
    connection
        .record(again.id, 1, &AtomicBool::new(false))
        .await
        .unwrap();
    match store.claim_job(20_200, 100).await.unwrap() {
        Some(Claim::Job(job)) => assert_eq!((job.id, job.attempts), (again.id, 3)),
        other => panic!("expected j2 claimed again, got {other:?}"),
    }
}

/// Many workers claiming at once on PostgreSQL (`FOR UPDATE SKIP LOCKED`): every job is claimed
/// exactly once, and concurrent SMS claims never spend more credit than there is.
async fn concurrent_claims(store: &Store) {
    let jobs: Vec<NewJob> = (0..200)
        .map(|n| {
            job(
                "carol",
                if n % 2 == 0 { "sms" } else { "sieve_email" },
                &format!("c{n}"),
            )
        })
        .collect();
    store
        .set_user(
            "carol",
            &UserUpdate {
                sms_credit: Some(30),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    store.insert_jobs(&jobs, 10_000).await.unwrap();
    // Workers claiming one job at a time and several at once.
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                loop {
                    let batch = store
                        .claim_jobs(10_000, 1_000_000, worker % 4 + 1)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return claimed;
                    }
                    claimed.extend(batch);
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    let (mut paid, mut unpaid) = (0, 0);
    for worker in workers {
        for claim in worker.await.unwrap() {
            match claim {
                Claim::Job(job) => {
                    paid += usize::from(job.kind == "sms");
                    ids.push(job.id);
                }
                Claim::NoCredit(job) => {
                    unpaid += 1;
                    ids.push(job.id);
                }
                Claim::Delivered(job) => panic!("nothing was journaled: {job:?}"),
            }
        }
    }
    assert_eq!(ids.len(), 200, "200 claims");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every job claimed once");
    assert_eq!((paid, unpaid), (30, 70));
    assert_eq!(store.user("carol").await.unwrap().sms_credit, 0);
}
