//! The records log on both backends: changes in order, idempotent, purged by integration,
//! gone after their retention age; on JetStream, on their subjects as CloudEvents.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::time::Duration;

use domain::{EventId, IntegrationId, SyncId, Timestamp};
use eventstore::nats_server::{unique_namespace, TestNats};
use eventstore::records::encode;
use eventstore::waiting::eventually;
use std::sync::Arc;

use eventstore::{
    purge_deleted_integrations, EventStore, ExpectedVersion, JetStreamConfig, JetStreamEventStore,
    JetStreamRecordLog, NewEvent, RecordChange, RecordLog, RecordOp, SledEventStore, SledRecordLog,
};
use serde_json::json;

fn change(integration: IntegrationId, n: u64, owner: Option<&str>) -> RecordChange {
    let data = json!({ "name": format!("Contact {n}"), "email": format!("c{n}@example.com") });
    RecordChange {
        id: EventId::new(),
        workspace: "acme".parse().unwrap(),
        owner: owner.map(|o| o.parse().unwrap()),
        integration,
        object: "contacts".into(),
        record_id: format!("hs-{n}"),
        op: if n % 3 == 2 {
            RecordOp::Updated
        } else {
            RecordOp::Created
        },
        content_hash: RecordChange::hash_of(&data).unwrap(),
        data,
        sync_id: SyncId::new(),
        occurred_at: Timestamp::now(),
    }
}

/// What every records log does.
async fn behaves(log: &dyn RecordLog) {
    let kept = IntegrationId::new();
    let deleted = IntegrationId::new();
    let first: Vec<RecordChange> = (0..5).map(|n| change(kept, n, None)).collect();
    let theirs: Vec<RecordChange> = (0..4).map(|n| change(deleted, n, Some("max"))).collect();
    log.publish(first.clone()).await.unwrap();
    log.publish(theirs.clone()).await.unwrap();
    // A retried page stores nothing twice.
    log.publish(first.clone()).await.unwrap();
    let all = log.read(1, 100).await.unwrap();
    assert_eq!(all.len(), 9);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let changes: Vec<RecordChange> = all.iter().map(|s| s.change.clone()).collect();
    assert_eq!(changes[..5], first[..]);
    assert_eq!(changes[5..], theirs[..]);
    let from_middle = log.read(all[3].position, 2).await.unwrap();
    assert_eq!(from_middle, all[3..5]);

    // Deleting an integration purges its records, and only its.
    let purged = log
        .purge_integration(
            &"acme".parse().unwrap(),
            Some(&"max".parse().unwrap()),
            deleted,
        )
        .await
        .unwrap();
    assert_eq!(purged, 4);
    let left = log.read(1, 100).await.unwrap();
    assert_eq!(left, all[..5]);
    // Positions go on after a purge; they never repeat.
    let later = vec![change(kept, 9, None)];
    log.publish(later.clone()).await.unwrap();
    let last = log.read(1, 100).await.unwrap().pop().unwrap();
    assert!(last.position > all.last().unwrap().position);
    assert_eq!(last.change, later[0]);

    let bad = RecordChange {
        object: "Contacts.all".into(),
        ..change(kept, 10, None)
    };
    assert!(log.publish(vec![bad]).await.is_err());
}

/// Waits, up to a deadline, for every change to pass its retention age.
async fn expires(log: &dyn RecordLog) {
    log.publish(vec![change(IntegrationId::new(), 1, None)])
        .await
        .unwrap();
    assert_eq!(log.read(1, 10).await.unwrap().len(), 1);
    eventually(Duration::from_secs(30), "the change expiring", || async {
        log.read(1, 10).await.unwrap().is_empty().then_some(())
    })
    .await;
}

/// Deleting an integration (its `Deleted` event) purges its records; the purger keeps its place.
async fn purges_when_deleted(events: Arc<dyn EventStore>, records: Arc<dyn RecordLog>) {
    let gone = IntegrationId::new();
    let kept = IntegrationId::new();
    records
        .publish((0..3).map(|n| change(gone, n, Some("max"))).collect())
        .await
        .unwrap();
    records.publish(vec![change(kept, 1, None)]).await.unwrap();
    let before = records.read(1, 1000).await.unwrap().len();
    let purger = tokio::spawn(purge_deleted_integrations(
        events.clone(),
        records.clone(),
        |_| async { Ok(()) },
    ));
    let mut metadata = eventstore::conformance::metadata();
    metadata.owner = Some("max".parse().unwrap());
    let deleted = NewEvent {
        id: EventId::new(),
        event_type: "Deleted".into(),
        schema: 1,
        data: json!({ "secrets_shredded": true }),
        metadata,
    };
    let at = events
        .append(
            &domain::StreamName::integration(gone),
            ExpectedVersion::Any,
            vec![deleted],
        )
        .await
        .unwrap();
    let left = eventually(
        Duration::from_secs(30),
        "the deleted integration's records going",
        || async {
            let left = records.read(1, 1000).await.unwrap();
            left.iter()
                .all(|r| r.change.integration != gone)
                .then_some(left)
        },
    )
    .await;
    assert_eq!(
        left.len(),
        before - 3,
        "other integrations' records went too"
    );
    assert!(left.iter().any(|r| r.change.integration == kept));
    eventually(
        Duration::from_secs(30),
        "the purge checkpoint moving",
        || async { (records.purge_checkpoint().await.unwrap() >= at.last_position).then_some(()) },
    )
    .await;
    purger.abort();
}

#[tokio::test]
async fn on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledRecordLog::open(dir.path().join("records"), Duration::from_secs(3600)).unwrap();
    behaves(&log).await;
    let short = SledRecordLog::open(dir.path().join("short"), Duration::from_secs(1)).unwrap();
    expires(&short).await;
    let events = Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    purges_when_deleted(events, Arc::new(log)).await;
}

async fn jetstream(
    nats: &TestNats,
    max_age: Duration,
) -> (JetStreamEventStore, JetStreamRecordLog) {
    let mut config = JetStreamConfig::new(nats.url.clone());
    config.namespace = unique_namespace();
    config.records_max_age = max_age;
    let store = JetStreamEventStore::connect(config).await.unwrap();
    let records = JetStreamRecordLog::open(&store).await.unwrap();
    (store, records)
}

#[tokio::test]
async fn on_jetstream() {
    let nats = TestNats::shared();
    let (store, log) = jetstream(&nats, Duration::from_secs(3600)).await;
    behaves(&log).await;

    // Each change is a CloudEvent on its integration's subject.
    let integration = IntegrationId::new();
    let one = change(integration, 7, Some("max"));
    log.publish(vec![one.clone()]).await.unwrap();
    let js = async_nats::jetstream::new(store.client().clone());
    let stream = js
        .get_stream(store.config().records_stream())
        .await
        .unwrap();
    let message = stream
        .get_last_raw_message_by_subject(&format!(
            "{}.records.acme.max.{integration}.contacts",
            store.config().namespace
        ))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["type"], "RecordCreated");
    assert_eq!(body["subject"], "contacts/hs-7");
    assert_eq!(body["recordid"], "hs-7");
    assert_eq!(body["op"], "created");
    assert_eq!(body["contenthash"], one.content_hash);
    assert_eq!(body["data"]["email"], "c7@example.com");
    assert_eq!(
        message.headers.get("Nats-Msg-Id").unwrap().as_str(),
        one.id.to_string()
    );
    let info = stream.cached_info();
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert!(info.config.deny_delete && !info.config.deny_purge);

    let (_store, short) = jetstream(&nats, Duration::from_secs(1)).await;
    expires(&short).await;
    purges_when_deleted(Arc::new(store), Arc::new(log)).await;
}

#[tokio::test]
async fn an_embedded_log_written_one_key_per_change_is_read_back_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records");
    let integration = IntegrationId::new();
    let changes: Vec<RecordChange> = (0..3).map(|n| change(integration, n, None)).collect();
    {
        // The layout before chunks: `R‖position` → (stored at, body), `I‖integration‖position`,
        // `M‖id` → position, `N` → the last position.
        let db = sled::open(&path).unwrap();
        let now = Timestamp::now().unix_micros().to_be_bytes();
        for (n, change) in changes.iter().enumerate() {
            let position = (n as u64 + 1).to_be_bytes();
            let mut value = now.to_vec();
            value.extend_from_slice(&encode(change).unwrap());
            let mut k = vec![b'R'];
            k.extend_from_slice(&position);
            db.insert(k, value).unwrap();
            let mut k = vec![b'I'];
            k.extend_from_slice(integration.0.as_bytes());
            k.extend_from_slice(&position);
            db.insert(k, &[]).unwrap();
            let mut k = vec![b'M'];
            k.extend_from_slice(change.id.0.as_bytes());
            db.insert(k, &position).unwrap();
            db.insert([b'N'], &position).unwrap();
        }
        db.flush().unwrap();
    }
    // sled's flusher thread lets go of the file lock a moment after the handle is dropped.
    let log = eventually(
        Duration::from_secs(10),
        "the old layout's lock released",
        || async { SledRecordLog::open(&path, Duration::from_secs(3600)).ok() },
    )
    .await;
    let read = log.read(1, 10).await.unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(
        read.iter().map(|r| r.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(read[1].change, changes[1]);
    // A repeat of what was stored before the upgrade is still dropped; new changes go on.
    log.publish(changes.clone()).await.unwrap();
    let later = change(integration, 7, None);
    log.publish(vec![later.clone()]).await.unwrap();
    let all = log.read(1, 10).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].position, 4);
    assert_eq!(all[3].change, later);
    assert_eq!(log.read(2, 2).await.unwrap(), all[1..3]);
}
