//! The store on SQLite and on a real PostgreSQL: migrations, registrations, identities, id
//! mappings, bridges' state, and the durable queues' batches, de-duplication and takeover rules.

use jabbridge::store::{NewRow, Queue, Store, Write, now_millis};
use jabbridge_sdk::RegistrationData;
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
        let data = RegistrationData::from_json(serde_json::json!({"prefix": "> "}));
        store
            .put_registration("echo.test", "alice@example.org", &data)
            .await
            .unwrap();
        store
            .put_registration(
                "echo.test",
                "alice@example.org",
                &RegistrationData::from_json(serde_json::json!({"prefix": "! "})),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .registration("echo.test", "alice@example.org")
                .await
                .unwrap(),
            Some(RegistrationData::from_json(
                serde_json::json!({"prefix": "! "})
            ))
        );
        assert_eq!(
            store.registrations("echo.test").await.unwrap(),
            vec![(
                "alice@example.org".to_owned(),
                RegistrationData::from_json(serde_json::json!({"prefix": "! "}))
            )]
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
        // The user unregistering keeps the identity an admin gave them.
        assert!(
            store
                .delete_registration("echo.test", "alice@example.org", false)
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_registration("echo.test", "alice@example.org", false)
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .identity_owner("echo.test", "+15551234567")
                .await
                .unwrap()
                .as_deref(),
            Some("alice@example.org")
        );
        // An admin removing the user takes it too.
        assert!(
            store
                .delete_registration("echo.test", "alice@example.org", true)
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

/// An id mapping of alice@x's message on bridge `b`.
fn map_id(xmpp_id: &str, foreign_id: &str) -> Write {
    Write::MapId {
        bridge: "b".into(),
        jid: "alice@x".into(),
        xmpp_id: xmpp_id.into(),
        foreign_id: foreign_id.into(),
        pending_report: None,
    }
}

#[tokio::test]
async fn message_ids_map_both_ways() {
    each_backend(async |store: Store| {
        store
            .commit_batch("a", &[map_id("xmpp-1", "sms-9")])
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
async fn batches_dedupe_record_outcomes_and_rows_move_only_from_dead_instances() {
    each_backend(async |store: Store| {
        let row = |queue: Queue, conversation: &str, key: &str| {
            Write::Enqueue(NewRow {
                queue,
                bridge: "b".into(),
                conversation: conversation.into(),
                dedupe_key: key.into(),
                payload: format!("{{\"k\":\"{key}\"}}"),
            })
        };
        for queue in [Queue::Outbox, Queue::Inbox] {
            // One batch: m1, a repeat of m1 in the same batch, m2, m3.
            let ids = store
                .commit_batch(
                    "a",
                    &[
                        row(queue, "alice|bob", "m1"),
                        row(queue, "alice|bob", "m1"),
                        row(queue, "alice|bob", "m2"),
                        row(queue, "alice|carol", "m3"),
                    ],
                )
                .await
                .unwrap();
            let (m1, m2, m3) = (ids[0].unwrap(), ids[2].unwrap(), ids[3].unwrap());
            assert_eq!(ids[1], None, "the repeat inside the batch");
            assert!(
                m1 < m2 && m2 < m3,
                "ids follow the order of the batch: {ids:?}"
            );
            // A repeat in a later batch is recognised too.
            let again = store
                .commit_batch("a", &[row(queue, "alice|bob", "m1")])
                .await
                .unwrap();
            assert_eq!(again, vec![None]);
            assert_eq!(store.pending(queue, "b").await.unwrap(), 3);

            // Outcomes, in one batch.
            let outcomes = store
                .commit_batch(
                    "a",
                    &[
                        Write::Complete { queue, id: m1 },
                        Write::Fail {
                            queue,
                            id: m3,
                            reason: "refused".into(),
                        },
                        Write::Retry {
                            queue,
                            id: m2,
                            at: 1234,
                        },
                    ],
                )
                .await
                .unwrap();
            assert_eq!(outcomes, vec![None, None, None]);
            assert_eq!(store.pending(queue, "b").await.unwrap(), 1);
            assert_eq!(store.finished(queue, "b", true).await.unwrap(), 1);
            assert_eq!(store.finished(queue, "b", false).await.unwrap(), 1);
            // A delivered message stays deduplicated.
            let delivered = store
                .commit_batch("a", &[row(queue, "alice|bob", "m1")])
                .await
                .unwrap();
            assert_eq!(delivered, vec![None]);

            // Instance a is alive: nobody takes its row.
            store.heartbeat("a").await.unwrap();
            let now = now_millis();
            let recent = Some(now - 60_000);
            assert!(
                store
                    .take_over(queue, "b", "z", recent)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // Once its heartbeat is older than the cutoff, the row moves, once, with its
            // attempts and due time.
            let stale = Some(now + 60_000);
            let taken = store.take_over(queue, "b", "z", stale).await.unwrap();
            assert_eq!(taken.len(), 1, "{taken:?}");
            assert_eq!(taken[0].id, m2);
            assert_eq!(taken[0].conversation, "alice|bob");
            assert_eq!(taken[0].payload, "{\"k\":\"m2\"}");
            assert_eq!(taken[0].attempts, 1);
            assert_eq!(taken[0].next_attempt_at, 1234);
            // An instance never takes its own rows back, alive or not.
            assert!(
                store
                    .take_over(queue, "b", "z", stale)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // Released at shutdown, they go to the next instance at once.
            assert_eq!(store.release(queue, "z").await.unwrap(), 1);
            store.heartbeat("y").await.unwrap();
            let released = store.take_over(queue, "b", "y", recent).await.unwrap();
            assert_eq!(released.len(), 1);
            // At start on SQLite (no cutoff) every other instance's rows move.
            let everything = store.take_over(queue, "b", "x", None).await.unwrap();
            assert_eq!(everything.len(), 1);
            assert!(
                store
                    .take_over(queue, "b", "x", None)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // Another bridge's rows are not touched.
            assert!(
                store
                    .take_over(queue, "other", "w", None)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // Finish it, for the next queue's counts.
            store
                .commit_batch("x", &[Write::Complete { queue, id: m2 }])
                .await
                .unwrap();
        }
        store.forget_instances(Some("a"), 0).await.unwrap();
        store
            .forget_instances(None, now_millis() + 1)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn old_message_ids_are_swept_unless_a_report_waits() {
    each_backend(async |store: Store| {
        store
            .commit_batch("a", &[map_id("x1", "f1")])
            .await
            .unwrap();
        let awaiting = Write::MapId {
            bridge: "b".into(),
            jid: "alice@x".into(),
            xmpp_id: "x2".into(),
            foreign_id: "f2".into(),
            pending_report: Some("{}".into()),
        };
        store.commit_batch("a", &[awaiting]).await.unwrap();
        let future = now_millis() + 60_000;
        assert_eq!(store.forget_message_ids(future).await.unwrap(), 1);
        assert_eq!(
            store
                .foreign_message_id("b", "alice@x", "x1")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .foreign_message_id("b", "alice@x", "x2")
                .await
                .unwrap(),
            Some("f2".into())
        );
        // Acting on the report clears it (in the batch that queues the notice); then the
        // mapping is swept like any other.
        assert_eq!(
            store.pending_report("b", "f2").await.unwrap().as_deref(),
            Some("{}")
        );
        let clear = Write::ClearReport {
            bridge: "b".into(),
            foreign_id: "f2".into(),
        };
        store.commit_batch("a", &[clear]).await.unwrap();
        assert_eq!(store.pending_report("b", "f2").await.unwrap(), None);
        assert_eq!(store.forget_message_ids(future).await.unwrap(), 1);
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
        .put_registration(
            "b",
            "a@x",
            &RegistrationData::from_json(serde_json::json!({})),
        )
        .await
        .unwrap();
    assert!(path.exists());
    assert!(dir.path().join("new.db-wal").exists(), "no WAL file");
}

#[tokio::test]
async fn id_mappings_commit_in_batches_and_the_last_of_a_key_wins() {
    each_backend(async |store: Store| {
        store
            .commit_batch(
                "a",
                &[map_id("x1", "f1"), map_id("x2", "f2"), map_id("x1", "f3")],
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .foreign_message_id("b", "alice@x", "x1")
                .await
                .unwrap(),
            Some("f3".into())
        );
        assert_eq!(
            store.xmpp_message_id("b", "f2").await.unwrap(),
            Some(("alice@x".into(), "x2".into()))
        );
    })
    .await;
}

/// A room message from Bob said at `at`: its foreign id is its stanza id and its text.
fn message(foreign_id: &str, at: i64) -> jabbridge::store::rooms::NewRoomMessage {
    jabbridge::store::rooms::NewRoomMessage {
        foreign_id: foreign_id.into(),
        stanza_id: foreign_id.into(),
        nick: "bob".into(),
        sender: "bob".into(),
        text: foreign_id.into(),
        origin_id: None,
        poster: None,
        said_at: at,
        replaces: None,
        reply_to: None,
        post_id: None,
    }
}

#[tokio::test]
async fn room_joins_and_the_archive_keep_each_message_once_per_room() {
    use jabbridge::store::rooms::JoinRow;
    each_backend(async |store: Store| {
        let rooms = store.rooms();
        let row = |resource: &str, nick: &str| JoinRow {
            jid: "alice@example.org".into(),
            room: "#lobby".into(),
            resource: resource.into(),
            nick: nick.into(),
        };
        rooms
            .join("echo.test", &row("phone", "alice"))
            .await
            .unwrap();
        rooms
            .join("echo.test", &row("laptop", "alice"))
            .await
            .unwrap();
        rooms
            .rename("echo.test", "alice@example.org", "#lobby", "alicia")
            .await
            .unwrap();
        let joins = rooms.joins("echo.test").await.unwrap();
        assert_eq!(joins, vec![row("laptop", "alicia"), row("phone", "alicia")]);
        rooms
            .leave("echo.test", "alice@example.org", "#lobby", Some("phone"))
            .await
            .unwrap();
        assert_eq!(
            rooms.joins("echo.test").await.unwrap(),
            vec![row("laptop", "alicia")]
        );
        assert!(rooms.joins("other.test").await.unwrap().is_empty());

        let now = now_millis();
        let first = rooms
            .archive("echo.test", "#lobby", message("m1", now - 10_000))
            .await
            .unwrap();
        assert!(first.is_some());
        // The same foreign id in the same room: kept once. In another room: its own.
        assert_eq!(
            rooms
                .archive("echo.test", "#lobby", message("m1", now))
                .await
                .unwrap(),
            None
        );
        assert!(
            rooms
                .archive("echo.test", "#other", message("m1", now))
                .await
                .unwrap()
                .is_some()
        );
        rooms
            .archive("echo.test", "#lobby", message("m2", now))
            .await
            .unwrap();
        // m3 replies to m2: what it answers comes back with it, however it is read.
        let answers_m2 = Some(jabbridge::store::rooms::RepliedTo {
            stanza_id: "m2".into(),
            nick: "bob".into(),
        });
        let reply = jabbridge::store::rooms::NewRoomMessage {
            reply_to: answers_m2.clone(),
            ..message("m3", now)
        };
        rooms.archive("echo.test", "#lobby", reply).await.unwrap();
        let last_two = rooms.history("echo.test", "#lobby", 2, 0).await.unwrap();
        let ids: Vec<&str> = last_two.iter().map(|m| m.stanza_id.as_str()).collect();
        assert_eq!(ids, ["m2", "m3"]);
        let replies: Vec<_> = last_two.iter().map(|m| m.reply_to.clone()).collect();
        assert_eq!(replies, [None, answers_m2.clone()]);
        let found = rooms
            .find(
                "echo.test",
                "#lobby",
                jabbridge::store::rooms::Find::Foreign("m3"),
            )
            .await
            .unwrap()
            .expect("m3");
        assert_eq!(found.reply_to, answers_m2);
        let recent = rooms
            .history("echo.test", "#lobby", 10, now - 1000)
            .await
            .unwrap();
        assert_eq!(recent.len(), 2);
        // Pages by archive id, time and nick, as a MAM query reads them.
        let m2 = rooms.archive_id("echo.test", "#lobby", "m2").await.unwrap();
        assert!(m2.is_some());
        assert_eq!(
            rooms
                .archive_id("echo.test", "#lobby", "nope")
                .await
                .unwrap(),
            None
        );
        let after = jabbridge::store::rooms::PageQuery {
            after: m2,
            nick: Some("bob".into()),
            end: Some(now),
            max: 5,
            ..Default::default()
        };
        let (page, complete) = rooms.page("echo.test", "#lobby", &after).await.unwrap();
        assert_eq!(
            page.iter()
                .map(|m| m.stanza_id.as_str())
                .collect::<Vec<_>>(),
            ["m3"]
        );
        assert!(complete);
        let before = jabbridge::store::rooms::PageQuery {
            before: m2,
            max: 5,
            ..Default::default()
        };
        let (page, _) = rooms.page("echo.test", "#lobby", &before).await.unwrap();
        assert_eq!(
            page.iter()
                .map(|m| m.stanza_id.as_str())
                .collect::<Vec<_>>(),
            ["m1"]
        );
        // A room's cursor, per instance, only moves forward.
        assert_eq!(
            rooms.cursor("echo.test", "#lobby", "a").await.unwrap(),
            None
        );
        rooms
            .set_cursor("echo.test", "#lobby", "a", 5)
            .await
            .unwrap();
        rooms
            .set_cursor("echo.test", "#lobby", "a", 3)
            .await
            .unwrap();
        rooms
            .set_cursor("echo.test", "#lobby", "b", 2)
            .await
            .unwrap();
        assert_eq!(
            rooms.cursor("echo.test", "#lobby", "a").await.unwrap(),
            Some(5)
        );
        assert_eq!(
            rooms.cursor("echo.test", "#lobby", "b").await.unwrap(),
            Some(2)
        );
        // Retention: m1 is older than what is kept.
        assert_eq!(
            rooms.forget_before("echo.test", now - 5000).await.unwrap(),
            1
        );
        assert_eq!(
            rooms
                .history("echo.test", "#lobby", 10, 0)
                .await
                .unwrap()
                .len(),
            2
        );
    })
    .await;
}

/// A network's older history joins the archive below what the room had, in the order it
/// was said, each foreign id once (SQLite and PostgreSQL: ids below every other).
#[tokio::test]
async fn older_history_is_archived_below_the_rooms_oldest_in_the_order_said() {
    use jabbridge::store::rooms::PageQuery;
    each_backend(async |store: Store| {
        let rooms = store.rooms();
        let now = now_millis();
        for (id, at) in [("live1", now), ("live2", now + 1)] {
            rooms
                .archive("irc.test", "#c", message(id, at))
                .await
                .unwrap();
        }
        // Another room's rows do not matter.
        rooms
            .archive("irc.test", "#other", message("x", now))
            .await
            .unwrap();
        // Given in any order; "live1" is one the room has.
        let older = [
            message("old2", now - 2_000),
            message("old1", now - 3_000),
            message("live1", now),
            message("old3", now - 1_000),
        ];
        assert_eq!(rooms.backfill("irc.test", "#c", &older).await.unwrap(), 3);
        // Further back still, later: below those.
        let oldest = [message("old0", now - 4_000)];
        assert_eq!(rooms.backfill("irc.test", "#c", &oldest).await.unwrap(), 1);
        let all = PageQuery {
            max: 10,
            ..PageQuery::default()
        };
        let (page, complete) = rooms.page("irc.test", "#c", &all).await.unwrap();
        assert!(complete);
        let texts: Vec<&str> = page.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["old0", "old1", "old2", "old3", "live1", "live2"]);
        // Paged back from the live lines, the older ones come next.
        let back = PageQuery {
            max: 2,
            before: Some(page[4].id),
            ..PageQuery::default()
        };
        let (page, _) = rooms.page("irc.test", "#c", &back).await.unwrap();
        let texts: Vec<&str> = page.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["old2", "old3"]);
    })
    .await;
}

#[tokio::test]
async fn a_group_commit_archives_room_messages_in_order_each_foreign_id_once() {
    use jabbridge::store::rooms::{ArchiveRow, NewRoomMessage};
    each_backend(async |store: Store| {
        let now = now_millis();
        let row = |room: &str, foreign_id: &str| {
            Write::Archive(ArchiveRow {
                bridge: "echo.test".into(),
                room: room.into(),
                message: NewRoomMessage {
                    foreign_id: foreign_id.into(),
                    stanza_id: format!("s-{room}-{foreign_id}"),
                    nick: "bob".into(),
                    sender: "bob".into(),
                    text: format!("said {foreign_id}"),
                    origin_id: None,
                    poster: None,
                    said_at: now,
                    replaces: None,
                    reply_to: None,
                    post_id: None,
                },
            })
        };
        let first = store
            .commit_batch("a", &[row("#lobby", "m0")])
            .await
            .unwrap();
        assert!(first[0].is_some());
        // More than one statement's worth, a repeat within the batch, a repeat of an
        // earlier batch, the same id in another room, and a queue write between them.
        let mut writes: Vec<Write> = (1..=100).map(|n| row("#lobby", &format!("m{n}"))).collect();
        writes.insert(50, row("#lobby", "m7"));
        writes.insert(10, row("#lobby", "m0"));
        writes.push(row("#other", "m1"));
        writes.push(Write::Enqueue(NewRow {
            queue: Queue::Outbox,
            bridge: "echo.test".into(),
            conversation: "alice|bob".into(),
            dedupe_key: "k1".into(),
            payload: "{}".into(),
        }));
        let ids = store.commit_batch("a", &writes).await.unwrap();
        assert_eq!(ids.len(), writes.len());
        assert_eq!(ids[10], None, "a repeat of an earlier batch");
        assert_eq!(ids[51], None, "a repeat within the batch");
        let lobby: Vec<i64> = ids[..102]
            .iter()
            .enumerate()
            .filter(|(index, _)| ![10, 51].contains(index))
            .map(|(_, id)| id.expect("archived"))
            .collect();
        assert_eq!(lobby.len(), 100);
        assert!(lobby.windows(2).all(|pair| pair[0] < pair[1]), "in order");
        assert!(ids[102].is_some(), "its own row in another room");
        assert!(ids[103].is_some(), "the queued message");
        let page = jabbridge::store::rooms::PageQuery {
            max: 200,
            ..Default::default()
        };
        let (archived, _) = store
            .rooms()
            .page("echo.test", "#lobby", &page)
            .await
            .unwrap();
        let texts: Vec<String> = archived.into_iter().map(|m| m.text).collect();
        let expected: Vec<String> = (0..=100).map(|n| format!("said m{n}")).collect();
        assert_eq!(texts, expected);
    })
    .await;
}

#[tokio::test]
async fn a_room_message_is_found_by_its_stanza_id_always_and_by_its_posters_ids_while_recent() {
    use jabbridge::store::rooms::{ArchiveRow, Find, NewRoomMessage, RECENT};
    each_backend(async |store: Store| {
        let row = |n: u32, poster: Option<&str>| {
            Write::Archive(ArchiveRow {
                bridge: "irc.test".into(),
                room: "#lobby".into(),
                message: NewRoomMessage {
                    foreign_id: format!("f{n}"),
                    stanza_id: format!("s{n}"),
                    nick: "alice".into(),
                    sender: "alice".into(),
                    text: format!("said {n}"),
                    origin_id: poster.map(|_| format!("o{n}")),
                    poster: poster.map(str::to_owned),
                    said_at: now_millis(),
                    replaces: None,
                    reply_to: None,
                    post_id: poster.map(|_| format!("p{n}")),
                },
            })
        };
        store
            .commit_batch("a", &[row(0, Some("alice@localhost"))])
            .await
            .unwrap();
        let rooms = store.rooms();
        let text = async |find: Find<'_>| {
            rooms
                .find("irc.test", "#lobby", find)
                .await
                .unwrap()
                .map(|message| message.text)
        };
        let shown = |id, poster| Find::Shown { id, poster };
        let alice = Some("alice@localhost");
        let found = Some("said 0".to_owned());
        assert_eq!(text(shown("s0", None)).await, found);
        assert_eq!(text(shown("o0", None)).await, found);
        assert_eq!(text(shown("o0", alice)).await, found);
        assert_eq!(text(shown("p0", alice)).await, found);
        assert_eq!(text(shown("s0", alice)).await, found);
        assert_eq!(
            text(shown("p0", None)).await,
            None,
            "a stanza's id only with its poster"
        );
        assert_eq!(
            text(shown("o0", Some("bob@localhost"))).await,
            None,
            "someone else's"
        );
        assert_eq!(
            text(shown("s0", Some("bob@localhost"))).await,
            None,
            "someone else's"
        );
        // Once RECENT more messages were said, the poster's ids no longer find it.
        let later: Vec<Write> = (1..=RECENT).map(|n| row(n, None)).collect();
        store.commit_batch("a", &later).await.unwrap();
        assert_eq!(text(shown("o0", alice)).await, None);
        assert_eq!(text(shown("p0", alice)).await, None);
        assert_eq!(
            text(shown("s0", alice)).await,
            found,
            "the room's id, however old"
        );
        assert_eq!(text(shown("s0", None)).await, found);
        assert_eq!(text(Find::Foreign("f0")).await, found);
        store
            .commit_batch("a", &[row(RECENT + 1, Some("alice@localhost"))])
            .await
            .unwrap();
        let newest = Some(format!("said {}", RECENT + 1));
        assert_eq!(
            text(shown(&format!("o{}", RECENT + 1), alice)).await,
            newest
        );
    })
    .await;
}

#[tokio::test]
async fn a_session_runs_in_one_instance_moves_from_dead_ones_and_takes_its_stanzas_and_rows() {
    each_backend(async |store: Store| {
        let data = RegistrationData::from_json(serde_json::json!({}));
        for user in ["alice@x", "bob@x"] {
            store.put_registration("b", user, &data).await.unwrap();
        }
        let tables = store.sessions();
        store.heartbeat("a").await.unwrap();
        store.heartbeat("z").await.unwrap();
        let now = now_millis();
        let (recent, stale) = (Some(now - 60_000), Some(now + 60_000));
        let users = |claimed: &[jabbridge::store::sessions::Claimed]| {
            let mut users: Vec<(String, Option<String>)> = claimed
                .iter()
                .map(|claim| (claim.jid.clone(), claim.previous.clone()))
                .collect();
            users.sort();
            users
        };

        // Instance a claims both sessions; while it lives, z gets none.
        let claimed = tables.claim("b", "a", None, recent).await.unwrap();
        assert_eq!(
            users(&claimed),
            [("alice@x".into(), None), ("bob@x".into(), None)]
        );
        assert!(
            tables
                .claim("b", "z", None, recent)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            tables
                .claim("b", "z", Some("alice@x"), recent)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(tables.owned("b", "a").await.unwrap(), ["alice@x", "bob@x"]);
        let elsewhere = tables.others("b", "z", now - 60_000).await.unwrap();
        assert_eq!(elsewhere.get("alice@x").map(String::as_str), Some("a"));
        assert!(
            tables
                .others("b", "a", now - 60_000)
                .await
                .unwrap()
                .is_empty()
        );

        // A stanza handed off for alice waits for a, not z, and goes once handled.
        tables
            .hand_off("b", "alice@x", "<message xmlns='jabber:component:accept'/>")
            .await
            .unwrap();
        assert!(tables.handed_to("b", "z", 10).await.unwrap().is_empty());
        let handed = tables.handed_to("b", "a", 10).await.unwrap();
        assert_eq!(handed.len(), 1);
        tables.handled(handed[0].id).await.unwrap();
        assert!(tables.handed_to("b", "a", 10).await.unwrap().is_empty());

        // A dead instance's queued messages: alice's go to a, which runs her session;
        // carol has none, so anyone may take hers.
        let queued = |conversation: &str, key: &str| {
            Write::Enqueue(NewRow {
                queue: Queue::Outbox,
                bridge: "b".into(),
                conversation: conversation.into(),
                dedupe_key: key.into(),
                payload: "{}".into(),
            })
        };
        store
            .commit_batch(
                "dead",
                &[queued("alice@x\nbob", "s1"), queued("carol@x\nbob", "s2")],
            )
            .await
            .unwrap();
        let by_z = store
            .take_over(Queue::Outbox, "b", "z", recent)
            .await
            .unwrap();
        assert_eq!(by_z.len(), 1);
        assert_eq!(by_z[0].conversation, "carol@x\nbob");
        let by_a = store
            .take_over(Queue::Outbox, "b", "a", recent)
            .await
            .unwrap();
        assert_eq!(by_a.len(), 1);
        assert_eq!(by_a[0].conversation, "alice@x\nbob");

        // Once a is taken for dead, z takes both, learning who ran them.
        let claimed = tables.claim("b", "z", None, stale).await.unwrap();
        assert_eq!(
            users(&claimed),
            [
                ("alice@x".into(), Some("a".into())),
                ("bob@x".into(), Some("a".into()))
            ]
        );
        // Handed back at shutdown, they go to a live instance at once, which learns that z
        // ran them.
        assert_eq!(tables.release("b", "z").await.unwrap(), 2);
        store.heartbeat("y").await.unwrap();
        let claimed = tables.claim("b", "y", Some("bob@x"), recent).await.unwrap();
        assert_eq!(users(&claimed), [("bob@x".into(), Some("z".into()))]);

        // Unregistered, alice's session is forgotten and never claimed again.
        tables.forget("b", "alice@x").await.unwrap();
        store
            .delete_registration("b", "alice@x", false)
            .await
            .unwrap();
        // At start on SQLite (no cutoff) every other instance's sessions move.
        let claimed = tables.claim("b", "x", None, None).await.unwrap();
        assert_eq!(users(&claimed), [("bob@x".into(), Some("y".into()))]);

        // Cursors of instances that neither run nor last ran a session are forgotten.
        let rooms = store.rooms();
        for instance in ["x", "y", "gone"] {
            rooms.set_cursor("b", "#r", instance, 7).await.unwrap();
        }
        assert_eq!(rooms.forget_orphan_cursors("b").await.unwrap(), 1);
        assert_eq!(rooms.cursor("b", "#r", "gone").await.unwrap(), None);
        assert_eq!(rooms.cursor("b", "#r", "y").await.unwrap(), Some(7));
        for instance in ["a", "dead", "x", "y", "z"] {
            store.forget_instances(Some(instance), 0).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn spend_counts_stop_at_their_caps_and_tell_the_bridge_count() {
    use jabbridge::store::Spent;
    each_backend(async |store: Store| {
        let spend = async |user: &str| store.spend("b", user, 7, Some(3), Some(2)).await.unwrap();
        assert_eq!(
            spend("alice").await,
            Spent::Counted {
                bridge_today: Some(1)
            }
        );
        assert_eq!(
            spend("alice").await,
            Spent::Counted {
                bridge_today: Some(2)
            }
        );
        // Alice's cap; nothing counted, not even for the bridge.
        assert_eq!(spend("alice").await, Spent::UserCapReached);
        assert_eq!(
            spend("bob").await,
            Spent::Counted {
                bridge_today: Some(3)
            }
        );
        assert_eq!(spend("bob").await, Spent::BridgeCapReached);
        // Without a bridge cap there is no bridge count.
        assert_eq!(
            store.spend("b", "carol", 7, None, Some(1)).await.unwrap(),
            Spent::Counted { bridge_today: None }
        );
        // Another day starts from nothing.
        assert_eq!(store.spent("b", 8).await.unwrap(), 0);
        assert_eq!(
            store.spend("b", "bob", 8, Some(3), None).await.unwrap(),
            Spent::Counted {
                bridge_today: Some(1)
            }
        );
        // What the gauge reads back: the bridge's count of the day (the cap reached on 7).
        assert_eq!(store.spent("b", 7).await.unwrap(), 3);
        assert_eq!(store.spent("b", 8).await.unwrap(), 1);
        assert_eq!(store.spent("other", 8).await.unwrap(), 0);
    })
    .await;
}

/// An awaited delivery report stays with its message through a plain mapping of the same
/// ids, in one batch or two, and goes when the foreign id changes.
#[tokio::test]
async fn an_awaited_report_survives_a_plain_mapping_but_not_a_new_foreign_id() {
    each_backend(async |store: Store| {
        let awaiting = |xmpp_id: &str, foreign_id: &str| Write::MapId {
            bridge: "b".into(),
            jid: "alice@x".into(),
            xmpp_id: xmpp_id.into(),
            foreign_id: foreign_id.into(),
            pending_report: Some("{\"r\":1}".into()),
        };
        store
            .commit_batch("a", &[awaiting("x1", "f1")])
            .await
            .unwrap();
        store
            .commit_batch("a", &[map_id("x1", "f1")])
            .await
            .unwrap();
        assert!(store.pending_report("b", "f1").await.unwrap().is_some());
        // In one batch too.
        store
            .commit_batch("a", &[awaiting("x2", "f2"), map_id("x2", "f2")])
            .await
            .unwrap();
        assert!(store.pending_report("b", "f2").await.unwrap().is_some());
        // A new foreign id for the message: the report awaited for the old one is gone.
        store
            .commit_batch("a", &[map_id("x1", "f9")])
            .await
            .unwrap();
        assert!(store.pending_report("b", "f1").await.unwrap().is_none());
        assert!(store.pending_report("b", "f9").await.unwrap().is_none());
    })
    .await;
}
