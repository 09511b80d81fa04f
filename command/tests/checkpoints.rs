//! Signed checkpoints on both backends: the heads of the streams that changed are signed once,
//! the newest checkpoint of a stream holds while the stream does, and a checkpoint that is not
//! the service's is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use command::checkpoints::{check, sign_new, CheckpointCheck, CheckpointKey, CheckpointLog};
use domain::{IntegrationId, StreamName};
use eventstore::conformance::event;
use eventstore::nats_server::{fresh_store, TestNats};
use eventstore::{EventStore, ExpectedVersion};

async fn signs_what_changed_and_holds(store: &dyn EventStore, log: &dyn CheckpointLog) {
    let key = CheckpointKey::generate();
    let a = StreamName::integration(IntegrationId::new());
    let b = StreamName::integration(IntegrationId::new());
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![event(1), event(2), event(3)],
        )
        .await
        .unwrap();
    store
        .append(&b, ExpectedVersion::NoStream, vec![event(4), event(5)])
        .await
        .unwrap();
    assert_eq!(
        check(store, log, &key.verifying(), &a).await.unwrap(),
        CheckpointCheck::NotSigned
    );
    assert_eq!(sign_new(store, log, &key).await.unwrap(), 2);
    assert_eq!(
        log.covered_to().await.unwrap(),
        store.head_position().await.unwrap()
    );
    assert_eq!(
        sign_new(store, log, &key).await.unwrap(),
        0,
        "nothing changed since"
    );
    assert!(matches!(
        check(store, log, &key.verifying(), &a).await.unwrap(),
        CheckpointCheck::Holds { version: 3, .. }
    ));
    store
        .append(&a, ExpectedVersion::Exact(3), vec![event(6)])
        .await
        .unwrap();
    assert_eq!(
        sign_new(store, log, &key).await.unwrap(),
        1,
        "only the stream that changed"
    );
    assert!(matches!(
        check(store, log, &key.verifying(), &a).await.unwrap(),
        CheckpointCheck::Holds { version: 4, .. }
    ));
    assert!(matches!(
        check(store, log, &key.verifying(), &b).await.unwrap(),
        CheckpointCheck::Holds { version: 2, .. }
    ));
    // Checked with another key, the signatures are nobody's.
    let other = CheckpointKey::generate();
    let CheckpointCheck::Broken { reason, .. } =
        check(store, log, &other.verifying(), &a).await.unwrap()
    else {
        panic!("another key's check passed");
    };
    assert!(
        reason.contains("not signed by this service's key"),
        "{reason}"
    );
}

#[tokio::test]
async fn on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = eventstore::SledEventStore::open(dir.path().join("log")).unwrap();
    let log =
        command::checkpoints::SledCheckpointLog::open(&dir.path().join("checkpoints")).unwrap();
    signs_what_changed_and_holds(&store, &log).await;
}

#[tokio::test]
async fn on_jetstream() {
    let nats = TestNats::shared();
    let store = fresh_store(&nats).await;
    let log = command::checkpoints::JetStreamCheckpointLog::open(&store)
        .await
        .unwrap();
    signs_what_changed_and_holds(&store, &log).await;
}
