//! The store on SQLite and on a real PostgreSQL: migrations, registrations, identities, id
//! mappings, bridges' state, and the durable queues' claim/lease/dedupe rules.

use std::time::Duration;

use jabbridge::store::{Queue, Store};
use secrecy::SecretString;

async fn each_backend(test: impl AsyncFn(Store)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}/store.db", dir.path().display());
    let mut urls = vec![sqlite];
    urls.extend(crate::harness::postgres_database().await);
    for url in urls {
        let store = Store::connect(&SecretString::from(url.clone()), 4)
            .await
            .expect(&url);
        store.migrate().await.expect("migrate");
        // Migrating twice is harmless.
        store.migrate().await.expect("migrate again");
        test(store).await;
    }
}

#[tokio::test]
async fn registrations_survive_reopening_and_update() {
    each_backend(async |store: Store| {
        let data = serde_json::json!({"prefix": "> "});
        store
            .put_registration("echo.test", "alice@example.org", &data)
            .await
            .unwrap();
        store
            .put_registration(
                "echo.test",
                "alice@example.org",
                &serde_json::json!({"prefix": "! "}),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .registration("echo.test", "alice@example.org")
                .await
                .unwrap(),
            Some(serde_json::json!({"prefix": "! "}))
        );
        assert_eq!(
            store.registered_jids("echo.test").await.unwrap(),
            vec!["alice@example.org"]
        );
        store
            .put_identity("echo.test", "+15551234567", "alice@example.org")
            .await
            .unwrap();
        assert_eq!(
            store
                .identity_owner("echo.test", "+15551234567")
                .await
                .unwrap()
                .as_deref(),
            Some("alice@example.org")
        );
        assert!(
            store
                .delete_registration("echo.test", "alice@example.org")
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_registration("echo.test", "alice@example.org")
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .identity_owner("echo.test", "+15551234567")
                .await
                .unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn bridge_state_is_kept_per_bridge_replaced_and_deleted() {
    each_backend(async |store: Store| {
        let disabled = serde_json::json!({"reason": "410", "since": "2026-11-21T10:00:00Z"});
        store
            .put_state("hooks.test", "disabled/alerts", Some(&disabled))
            .await
            .unwrap();
        assert_eq!(
            store.state("hooks.test", "disabled/alerts").await.unwrap(),
            Some(disabled)
        );
        assert_eq!(
            store.state("other.test", "disabled/alerts").await.unwrap(),
            None
        );
        let again = serde_json::json!({"reason": "admin", "since": "later"});
        store
            .put_state("hooks.test", "disabled/alerts", Some(&again))
            .await
            .unwrap();
        assert_eq!(
            store.state("hooks.test", "disabled/alerts").await.unwrap(),
            Some(again)
        );
        store
            .put_state("hooks.test", "disabled/alerts", None)
            .await
            .unwrap();
        assert_eq!(
            store.state("hooks.test", "disabled/alerts").await.unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn message_ids_map_both_ways() {
    each_backend(async |store: Store| {
        store
            .map_message_id("b", "alice@x", "xmpp-1", "sms-9")
            .await
            .unwrap();
        assert_eq!(
            store
                .foreign_message_id("b", "alice@x", "xmpp-1")
                .await
                .unwrap()
                .as_deref(),
            Some("sms-9")
        );
        assert_eq!(
            store.xmpp_message_id("b", "sms-9").await.unwrap(),
            Some(("alice@x".to_owned(), "xmpp-1".to_owned()))
        );
        assert_eq!(
            store
                .foreign_message_id("b", "bob@x", "xmpp-1")
                .await
                .unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn queues_dedupe_keep_order_per_conversation_and_lease() {
    each_backend(async |store: Store| {
        let lease = Duration::from_secs(60);
        for queue in [Queue::Outbox, Queue::Inbox] {
            assert!(
                store
                    .enqueue(queue, "b", "alice|bob", "m1", "{\"n\":1}")
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .enqueue(queue, "b", "alice|bob", "m1", "{\"n\":1}")
                    .await
                    .unwrap(),
                "dedupe"
            );
            assert!(
                store
                    .enqueue(queue, "b", "alice|bob", "m2", "{\"n\":2}")
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .enqueue(queue, "b", "alice|carol", "m3", "{\"n\":3}")
                    .await
                    .unwrap()
            );

            let first = store
                .claim(queue, "b", "worker-a", lease)
                .await
                .unwrap()
                .expect("m1");
            assert_eq!(first.dedupe_key, "m1");
            assert_eq!(first.attempts, 1);
            // m2 waits behind m1 (same conversation); carol's conversation goes ahead.
            let second = store
                .claim(queue, "b", "worker-b", lease)
                .await
                .unwrap()
                .expect("m3");
            assert_eq!(second.dedupe_key, "m3");
            assert_eq!(
                store.claim(queue, "b", "worker-b", lease).await.unwrap(),
                None
            );

            // Only the lease holder completes.
            assert!(!store.complete(queue, first.id, "worker-b").await.unwrap());
            assert!(store.complete(queue, first.id, "worker-a").await.unwrap());
            let next = store
                .claim(queue, "b", "worker-a", lease)
                .await
                .unwrap()
                .expect("m2");
            assert_eq!(next.dedupe_key, "m2");

            // A retry releases the row until its time comes.
            assert!(
                store
                    .retry_later(queue, next.id, "worker-a", Duration::from_secs(3600))
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.claim(queue, "b", "worker-a", lease).await.unwrap(),
                None
            );
            assert_eq!(store.pending(queue, "b").await.unwrap(), 2);

            // A delivered message stays deduplicated.
            assert!(
                !store
                    .enqueue(queue, "b", "alice|bob", "m1", "{}")
                    .await
                    .unwrap()
            );
        }
        // An expired lease lets another worker take the row.
        assert!(
            store
                .enqueue(Queue::Outbox, "c", "x", "k", "{}")
                .await
                .unwrap()
        );
        let taken = store
            .claim(Queue::Outbox, "c", "w1", Duration::from_millis(1))
            .await
            .unwrap()
            .expect("k");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let retaken = store
            .claim(Queue::Outbox, "c", "w2", lease)
            .await
            .unwrap()
            .expect("k again");
        assert_eq!(retaken.id, taken.id);
        assert_eq!(retaken.attempts, 2);
        assert!(!store.complete(Queue::Outbox, taken.id, "w1").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn the_sqlite_file_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("new.db");
    let store = Store::connect(
        &SecretString::from(format!("sqlite://{}", path.display())),
        2,
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
        .put_registration("b", "a@x", &serde_json::json!({}))
        .await
        .unwrap();
    assert!(path.exists());
    assert!(dir.path().join("new.db-wal").exists(), "no WAL file");
}
