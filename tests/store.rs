//! The device store's contract, run against SQLite always and against PostgreSQL when
//! `MAILPUSH_TEST_PG_URL` names a server (CI sets it; `cargo test -- --ignored` runs it).

use std::str::FromStr;

use mailpush::store::{DeviceError, Environment, NewDevice, Platform, Store, Upserted};
use sqlx::postgres::PgConnectOptions;

fn new_device(user: &str, token: &str) -> NewDevice {
    NewDevice {
        user_id: user.into(),
        platform: Platform::Apns,
        token: token.into(),
        app: "com.example.mail".into(),
        environment: Environment::Sandbox,
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
    store.ping().await.unwrap();
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
    assert!(again.all_devices().await.unwrap().is_empty());
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
    store.migrate().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(admin_pool)
        .await
        .unwrap();
}
