//! The JetStream backend against a real nats-server: the conformance suite, and what only a
//! distributed log has (subjects, the stream's configuration, atomic batches on the wire,
//! the duplicate window, foreign messages).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use async_trait::async_trait;
use domain::StreamName;
use eventstore::conformance::{Backend, Tampered};
use eventstore::nats_server::{fresh_store, TestNats};
use eventstore::{EventStore, JetStreamEventStore};

struct JetStream {
    nats: TestNats,
}

fn jetstream() -> JetStream {
    JetStream {
        nats: TestNats::shared(),
    }
}

#[async_trait]
impl Backend for JetStream {
    type Store = JetStreamEventStore;

    async fn fresh(&self) -> JetStreamEventStore {
        fresh_store(&self.nats).await
    }

    async fn tamper(
        &self,
        store: &JetStreamEventStore,
        stream: &StreamName,
        position: u64,
    ) -> Tampered {
        // The stream denies deletes and purges, so history cannot be rewritten in place: the
        // forger publishes a copy of the event with other data straight to its subject.
        let events = store.read_stream(stream, 1, 10_000).await.unwrap();
        let original = events.iter().find(|e| e.position == position).unwrap();
        let mut forged = original.clone();
        forged.data_json = r#"{"n":999}"#.into();
        let body = eventstore::wire::encode((&forged).into()).unwrap();
        let subject = store
            .subject_for(stream, &forged.event_type, &forged.metadata)
            .unwrap();
        let js = async_nats::jetstream::new(store.client().clone());
        let ack = js
            .publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        Tampered {
            version: original.version,
            position: ack.sequence,
            intact_before: events.len() as u64,
        }
    }
}

eventstore::conformance_tests!(jetstream());

mod distributed {
    use std::time::Duration;

    use async_nats::jetstream;
    use domain::{Actor, EventId, StreamName};
    use eventstore::conformance::{event, metadata, stream};
    use eventstore::nats_server::{unique_namespace, NatsServer, TestNats};
    use eventstore::waiting::eventually;
    use eventstore::{
        verify_stream, EventStore, ExpectedVersion, JetStreamConfig, JetStreamEventStore,
        StoreError,
    };
    use futures::StreamExt;

    fn config(nats: &TestNats) -> JetStreamConfig {
        let mut config = JetStreamConfig::new(nats.url.clone());
        config.namespace = unique_namespace();
        config
    }

    async fn raw_message(
        store: &JetStreamEventStore,
        seq: u64,
    ) -> jetstream::message::StreamMessage {
        let js = jetstream::new(store.client().clone());
        js.get_stream(store.config().events_stream())
            .await
            .unwrap()
            .get_raw_message(seq)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn events_land_on_subjects_by_workspace_owner_and_integration() {
        let nats = TestNats::shared();
        let store = JetStreamEventStore::connect(config(&nats)).await.unwrap();
        let ns = store.config().namespace.clone();
        let integration = domain::IntegrationId::new();
        let workspace_stream = StreamName::integration(integration);
        let at = store
            .append(&workspace_stream, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap();
        assert_eq!(
            raw_message(&store, at.first_position)
                .await
                .subject
                .as_str(),
            format!("{ns}.events.acme.ws.{integration}.TestHappened")
        );

        let personal = StreamName::integration(domain::IntegrationId::new());
        let mut mine = event(2);
        mine.metadata.owner = Some("max".parse().unwrap());
        mine.metadata.actor = Actor::User("max".parse().unwrap());
        let at = store
            .append(&personal, ExpectedVersion::NoStream, vec![mine])
            .await
            .unwrap();
        let message = raw_message(&store, at.first_position).await;
        assert_eq!(
            message.subject.as_str(),
            format!(
                "{ns}.events.acme.max.{}.TestHappened",
                personal.integration_id().unwrap()
            )
        );
        // The headers name the event without the body being parsed, and the body is a
        // CloudEvent.
        let headers = &message.headers;
        assert_eq!(
            headers.get("Harmony-Event-Type").unwrap().as_str(),
            "TestHappened"
        );
        assert_eq!(headers.get("Harmony-Event-Schema").unwrap().as_str(), "1");
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            headers.get("Harmony-Event-Id").unwrap().as_str(),
            body["id"]
        );
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), body["id"]);
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["source"], "/workspaces/acme");
        assert_eq!(body["subject"], personal.as_str());
        assert_eq!(body["owner"], "max");
        assert_eq!(body["data"]["n"], 2);

        let policy = StreamName::workspace(&"acme".parse().unwrap());
        let at = store
            .append(&policy, ExpectedVersion::NoStream, vec![event(3)])
            .await
            .unwrap();
        assert_eq!(
            raw_message(&store, at.first_position)
                .await
                .subject
                .as_str(),
            format!("{ns}.events.acme.ws.policy.TestHappened")
        );
        let mut elsewhere = event(4);
        elsewhere.metadata.workspace = "globex".parse().unwrap();
        let refused = store
            .append(&policy, ExpectedVersion::Any, vec![elsewhere])
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::InvalidData(_)), "{refused:?}");

        // The type is a subject token: it must be one.
        let mut dotted = event(6);
        dotted.event_type = "Test.Happened".into();
        let refused = store
            .append(&policy, ExpectedVersion::Any, vec![dotted])
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::InvalidData(_)), "{refused:?}");

        // A personal stream moved under another owner would fork; the check spans owners.
        let mut moved = event(5);
        moved.metadata.owner = Some("eve".parse().unwrap());
        let conflict = store
            .append(&personal, ExpectedVersion::NoStream, vec![moved])
            .await
            .unwrap_err();
        assert!(
            matches!(
                conflict,
                StoreError::Conflict {
                    actual: Some(1),
                    ..
                }
            ),
            "{conflict:?}"
        );
    }

    #[tokio::test]
    async fn the_stream_is_created_once_with_its_guarantees_and_never_silently_changed() {
        let nats = TestNats::shared();
        let config = config(&nats);
        let store = JetStreamEventStore::connect(config.clone()).await.unwrap();
        // Connecting again finds the stream as it should be.
        JetStreamEventStore::connect(config.clone()).await.unwrap();
        let js = jetstream::new(store.client().clone());
        let mut events = js.get_stream(config.events_stream()).await.unwrap();
        let info = events.info().await.unwrap().clone();
        assert_eq!(
            info.config.subjects,
            [format!("{}.events.>", config.namespace)]
        );
        assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
        assert!(info.config.deny_delete && info.config.deny_purge);
        assert!(info.config.allow_atomic_publish && info.config.allow_direct);
        assert_eq!(info.config.duplicate_window, config.duplicate_window);
        assert_eq!(info.config.max_age, Duration::ZERO);

        let at = store
            .append(&stream("kept"), ExpectedVersion::Any, vec![event(1)])
            .await
            .unwrap();
        assert!(events.delete_message(at.first_position).await.is_err());
        assert!(events.purge().await.is_err());
        assert_eq!(
            store
                .read_stream(&stream("kept"), 1, 10)
                .await
                .unwrap()
                .len(),
            1
        );

        // A stream someone set up differently is an error that names the difference.
        let other = config.events_stream().replace("_EVENTS", "X_EVENTS");
        let mut odd = JetStreamConfig::new(nats.url.clone());
        odd.namespace = format!("{}x", config.namespace);
        assert_eq!(odd.events_stream(), other);
        js.create_stream(jetstream::stream::Config {
            name: other,
            subjects: vec![odd.events_subjects()],
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
        let error = JetStreamEventStore::connect(odd).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, StoreError::Misconfigured(_)), "{error:?}");
        for named in [
            "deny_delete",
            "deny_purge",
            "allow_atomic",
            "max_age",
            "left unchanged",
        ] {
            assert!(text.contains(named), "{named} missing from: {text}");
        }
    }

    #[tokio::test]
    async fn a_refused_batch_leaves_nothing_behind() {
        let nats = TestNats::shared();
        let store = JetStreamEventStore::connect(config(&nats)).await.unwrap();
        let s = stream("atomic");
        store
            .append(&s, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap();
        let head = store.head_position().await.unwrap();
        // A stale expectation refuses the whole batch of three.
        let conflict = store
            .append(
                &s,
                ExpectedVersion::NoStream,
                vec![event(2), event(3), event(4)],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(conflict, StoreError::Conflict { .. }),
            "{conflict:?}"
        );
        // A batch whose second message is too large for the server fails before its commit
        // is sent: the server never stores the first one.
        let mut huge = event(6);
        huge.data = serde_json::json!({ "blob": "x".repeat(2 * 1024 * 1024) });
        let error = store
            .append(
                &s,
                ExpectedVersion::Exact(1),
                vec![event(5), huge, event(7)],
            )
            .await
            .unwrap_err();
        assert!(!matches!(error, StoreError::Conflict { .. }), "{error:?}");
        assert_eq!(store.head_position().await.unwrap(), head);
        assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 1);
        // And the stream goes on from where it was.
        let next = store
            .append(&s, ExpectedVersion::Exact(1), vec![event(8), event(9)])
            .await
            .unwrap();
        assert_eq!((next.first_version, next.last_version), (2, 3));
        assert_eq!(next.first_position, head + 1);
        assert!(verify_stream(&store, &s).await.unwrap().is_intact());
    }

    #[tokio::test]
    async fn retries_past_the_duplicate_window_still_store_nothing_twice() {
        let nats = TestNats::shared();
        let mut config = config(&nats);
        config.duplicate_window = Duration::from_secs(1);
        let store = JetStreamEventStore::connect(config).await.unwrap();
        let s = stream("late");
        let batch = vec![event(1), event(2), event(3)];
        let single = vec![event(4)];
        let first = store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await
            .unwrap();
        let second = store
            .append(&s, ExpectedVersion::Exact(3), single.clone())
            .await
            .unwrap();
        // Wait until the server has forgotten these ids: a probe published after them is
        // taken again (not dropped as a duplicate) once the window has passed for it, and so
        // for everything before it.
        let js = jetstream::new(store.client().clone());
        let probe = uuid::Uuid::now_v7().to_string();
        let publish_probe = || {
            let (js, probe) = (js.clone(), probe.clone());
            let subject = format!("{}.events.acme.ws.probe", store.config().namespace);
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", probe.as_str());
                js.publish_with_headers(subject, headers, "probe".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap()
            }
        };
        assert!(!publish_probe().await.duplicate);
        eventually(
            Duration::from_secs(30),
            "the duplicate window passing",
            || async { (!publish_probe().await.duplicate).then_some(()) },
        )
        .await;
        assert_eq!(
            store
                .append(&s, ExpectedVersion::NoStream, batch.clone())
                .await
                .unwrap(),
            first
        );
        assert_eq!(
            store
                .append(&s, ExpectedVersion::Any, single.clone())
                .await
                .unwrap(),
            second
        );
        assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 4);
        // The server alone would have stored the retry again: its window is over.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", single[0].id.to_string().as_str());
        let ack = js
            .publish_with_headers(
                format!("{}.events.acme.ws.probe", store.config().namespace),
                headers,
                "x".into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate, "the duplicate window had not passed");
    }

    #[tokio::test]
    async fn messages_the_log_cannot_read_are_skipped_not_fatal() {
        let nats = TestNats::shared();
        let store = JetStreamEventStore::connect(config(&nats)).await.unwrap();
        let s = stream("foreign");
        store
            .append(&s, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap();
        let mut live = store.subscribe(1);
        // Someone with publish rights writes garbage on the stream's own subject.
        let subject = store.subject_for(&s, "TestHappened", &metadata()).unwrap();
        let js = jetstream::new(store.client().clone());
        let garbage = js
            .publish(subject, "not an event".into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
        // The log reads past it, appends after it, and its subscribers go on.
        assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 1);
        let fresh = JetStreamEventStore::connect(store.config().clone())
            .await
            .unwrap();
        assert_eq!(fresh.stream_version(&s).await.unwrap(), Some(1));
        let next = fresh
            .append(&s, ExpectedVersion::Exact(1), vec![event(2)])
            .await
            .unwrap();
        assert_eq!((next.first_version, next.first_position), (2, garbage + 1));
        let seen: Vec<u64> = tokio::time::timeout(
            Duration::from_secs(30),
            (&mut live)
                .take(2)
                .map(|e| e.unwrap().position)
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the subscription stalled");
        assert_eq!(seen, [garbage - 1, garbage + 1]);
        assert!(verify_stream(&store, &s).await.unwrap().is_intact());
        assert_eq!(store.read_all(1, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_missing_server_or_jetstream_is_a_clear_error_at_start() {
        let server = NatsServer::start_without_jetstream();
        let error = JetStreamEventStore::connect(JetStreamConfig::new(server.url.clone()))
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
        assert!(
            error.to_string().contains("JetStream is not available"),
            "{error}"
        );
        let url = server.url.clone();
        drop(server);
        let mut config = JetStreamConfig::new(url.clone());
        config.connect_timeout = Duration::from_secs(2);
        let error = JetStreamEventStore::connect(config).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("cannot reach NATS at {url}")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn appends_during_an_outage_fail_retryably_and_resume_after_it() {
        let mut server = NatsServer::start();
        let mut config = JetStreamConfig::new(server.url.clone());
        config.request_timeout = Duration::from_secs(2);
        let store = JetStreamEventStore::connect(config).await.unwrap();
        let s = stream("outage");
        store
            .append(&s, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .unwrap();
        server.kill();
        let started = std::time::Instant::now();
        let error = store
            .append(&s, ExpectedVersion::Exact(1), vec![event(2), event(3)])
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the append hung"
        );
        server.start_again();
        // The client reconnects by itself; the same batch, retried, lands once.
        let batch = vec![event(4), event(5)];
        let result = eventually(
            Duration::from_secs(30),
            "an append after the restart",
            || async {
                match store.append(&s, ExpectedVersion::Any, batch.clone()).await {
                    Ok(result) => Some(result),
                    Err(error) if error.is_retryable() => None,
                    Err(error) => panic!("no recovery: {error:?}"),
                }
            },
        )
        .await;
        let events = store.read_stream(&s, 1, 10).await.unwrap();
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids.iter().filter(|id| **id == batch[0].id).count(), 1);
        assert_eq!(result.last_version, events.len() as u64);
        assert!(verify_stream(&store, &s).await.unwrap().is_intact());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_server_restart_under_16_writers_loses_and_repeats_nothing() {
        let mut server = NatsServer::start();
        let mut config = JetStreamConfig::new(server.url.clone());
        config.request_timeout = Duration::from_secs(2);
        let store = JetStreamEventStore::connect(config).await.unwrap();

        // A subscriber from the start, and one resuming later from its own checkpoint.
        let mut subscriber = store.subscribe(1);

        let writers = 16u64;
        let per_writer = 40u64;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<EventId>::new()));
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let (store, acked) = (store.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let s = stream(&format!("restart{writer}"));
                let mut version = 0;
                let retryable_errors = std::sync::atomic::AtomicU32::new(0);
                for i in 0..per_writer {
                    let batch = if i % 4 == 0 {
                        vec![event(i), event(i + 1000)]
                    } else {
                        vec![event(i)]
                    };
                    // Retry the same batch (the same ids) until it is acknowledged.
                    let result =
                        eventually(Duration::from_secs(60), "an acknowledged append", || {
                            let (store, s, batch) = (&store, &s, batch.clone());
                            let errors = &retryable_errors;
                            async move {
                                match store
                                    .append(s, ExpectedVersion::from_version(version), batch)
                                    .await
                                {
                                    Ok(result) => Some(result),
                                    Err(error) if error.is_retryable() => {
                                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        None
                                    }
                                    Err(error) => panic!("not a retryable error: {error:?}"),
                                }
                            }
                        })
                        .await;
                    version = result.last_version;
                    acked.lock().unwrap().extend(batch.iter().map(|e| e.id));
                }
                retryable_errors.into_inner()
            }));
        }
        // Restart the server once a third of the appends are in.
        eventually(
            Duration::from_secs(60),
            "a third of the appends",
            || async {
                (acked.lock().unwrap().len() >= (writers * per_writer / 3) as usize).then_some(())
            },
        )
        .await;
        server.start_again();
        let mut errors = 0;
        for task in tasks {
            errors += task.await.unwrap();
        }
        assert!(errors > 0, "the restart went unnoticed: nothing was tested");

        let all = store.read_all(1, 100_000).await.unwrap();
        let acked = acked.lock().unwrap().clone();
        let mut seen = std::collections::HashMap::new();
        for event in &all {
            *seen.entry(event.id).or_insert(0) += 1;
        }
        assert!(seen.values().all(|n| *n == 1), "an event is stored twice");
        for id in &acked {
            assert_eq!(seen.get(id), Some(&1), "acknowledged {id} is missing");
        }
        for writer in 0..writers {
            let s = stream(&format!("restart{writer}"));
            let report = verify_stream(&store, &s).await.unwrap();
            assert!(report.is_intact(), "{report:?}");
            assert_eq!(report.events, per_writer + per_writer / 4);
        }

        // The subscriber saw exactly the log, in order, across the restart; one resuming from
        // a checkpoint in the middle picks up right after it.
        let expected: Vec<(u64, EventId)> = all.iter().map(|e| (e.position, e.id)).collect();
        let delivered: Vec<(u64, EventId)> = tokio::time::timeout(
            Duration::from_secs(60),
            (&mut subscriber)
                .take(expected.len())
                .map(|e| {
                    let e = e.unwrap();
                    (e.position, e.id)
                })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the subscriber did not catch up after the restart");
        assert_eq!(delivered, expected);
        let checkpoint = expected[expected.len() / 2].0;
        let resumed: Vec<(u64, EventId)> = tokio::time::timeout(
            Duration::from_secs(60),
            store
                .subscribe(checkpoint + 1)
                .take(expected.len() - expected.len() / 2 - 1)
                .map(|e| {
                    let e = e.unwrap();
                    (e.position, e.id)
                })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the resumed subscriber stalled");
        assert_eq!(resumed, expected[expected.len() / 2 + 1..]);
    }

    #[tokio::test]
    async fn a_process_told_of_a_version_reads_the_stream_at_least_that_far() {
        let nats = TestNats::shared();
        let config = config(&nats);
        let writer = JetStreamEventStore::connect(config.clone()).await.unwrap();
        let reader = JetStreamEventStore::connect(config).await.unwrap();
        let s = stream("told");
        writer
            .append(&s, ExpectedVersion::NoStream, vec![event(1), event(2)])
            .await
            .unwrap();
        // Told of a version no server holds yet, the reader waits for it rather than answer
        // with less, and says so when it does not come.
        reader.observed(&s, 3);
        let behind = reader.read_stream(&s, 1, 10).await.unwrap_err();
        assert!(
            matches!(&behind, StoreError::Unavailable { what: message, .. } if message.contains("version 3")),
            "{behind:?}"
        );
        writer
            .append(&s, ExpectedVersion::Exact(2), vec![event(3)])
            .await
            .unwrap();
        let read = reader.read_stream(&s, 1, 10).await.unwrap();
        assert_eq!(read.last().map(|e| e.version), Some(3));
        // Reads from past the told version, or of another stream, do not wait for it.
        assert!(reader.read_stream(&s, 4, 10).await.unwrap().is_empty());
        assert!(reader
            .read_stream(&stream("other"), 1, 10)
            .await
            .unwrap()
            .is_empty());
    }
}

/// The run-detail log on JetStream: an append lands only on the end it names, a run reads back
/// whole with its chain, an import copies a run as it is, and the stream's `max_age` is the
/// retention, changed in place when the retention changes.
#[tokio::test]
async fn run_detail_grows_only_from_its_end_and_ages_out_by_the_streams_max_age() {
    use eventstore::{check_detail, DetailCheck, DetailTip, JetStreamRunDetailLog, RunDetailLog};
    let nats = TestNats::shared();
    let store = fresh_store(&nats).await;
    let log = JetStreamRunDetailLog::open(&store).await.unwrap();
    let run = domain::SyncId::new();
    let event = |page: u32| eventstore::NewEvent {
        id: domain::EventId::new(),
        event_type: "SyncProgressed".into(),
        schema: 1,
        data: serde_json::json!({"page": page}),
        metadata: domain::Metadata {
            workspace: "acme".parse().unwrap(),
            owner: None,
            actor: domain::Actor::System("test".into()),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: None,
            occurred_at: domain::Timestamp::now(),
        },
    };
    let first = log
        .append(run, DetailTip::EMPTY, vec![event(1), event(2)])
        .await
        .unwrap();
    let second = log.append(run, first, vec![event(3)]).await.unwrap();
    assert_eq!((first.version, second.version), (2, 3));
    let stale = log.append(run, first, vec![event(9)]).await;
    assert!(
        matches!(stale, Err(eventstore::StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let again = log.append(run, DetailTip::EMPTY, vec![event(9)]).await;
    assert!(matches!(
        again,
        Err(eventstore::StoreError::Conflict { .. })
    ));
    let read = log.read(run).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(DetailTip::after(read.last().unwrap()), second);
    let check = check_detail(
        &log,
        run,
        3,
        &second.hash.to_hex(),
        domain::Timestamp::now(),
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(check, DetailCheck::Intact { events: 3 });
    // Copied into another namespace as it is.
    let other = fresh_store(&nats).await;
    let copy = JetStreamRunDetailLog::open(&other).await.unwrap();
    copy.import(run, read.clone()).await.unwrap();
    let copied = copy.read(run).await.unwrap();
    assert_eq!(
        copied.iter().map(|e| (e.id, e.hash)).collect::<Vec<_>>(),
        read.iter().map(|e| (e.id, e.hash)).collect::<Vec<_>>()
    );
    // The retention is the stream's max age, and a new one replaces it.
    let js = async_nats::jetstream::new(store.client().clone());
    let name = store.config().runs_stream();
    let max_age = |js: async_nats::jetstream::Context, name: String| async move {
        js.get_stream(&name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .max_age
    };
    assert_eq!(
        max_age(js.clone(), name.clone()).await,
        store.config().run_detail_max_age
    );
    let mut config = store.config().clone();
    config.run_detail_max_age = std::time::Duration::from_secs(7 * 86_400);
    let reopened = JetStreamEventStore::connect(config).await.unwrap();
    JetStreamRunDetailLog::open(&reopened).await.unwrap();
    assert_eq!(
        max_age(js, name).await,
        std::time::Duration::from_secs(7 * 86_400)
    );
}
