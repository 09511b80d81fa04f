//! The work queue on JetStream: offers deduplicated by id, taken with the version they need.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use command::work_queue::WorkQueue;
use eventstore::nats_server::{unique_namespace, TestNats};
use eventstore::waiting::eventually;
use eventstore::{JetStreamConfig, JetStreamEventStore};
use futures::StreamExt;

fn config(nats: &TestNats) -> JetStreamConfig {
    let mut config = JetStreamConfig::new(nats.url.clone());
    config.namespace = unique_namespace();
    config
}

#[tokio::test]
async fn work_is_offered_once_per_id_and_taken_with_the_version_it_needs() {
    let nats = TestNats::shared();
    let store = JetStreamEventStore::connect(config(&nats)).await.unwrap();
    let queue = WorkQueue::open(&store, "tests", Duration::from_secs(30))
        .await
        .unwrap();
    queue.offer("k-1", "first", 7).await.unwrap();
    queue.offer("k-1", "first", 7).await.unwrap();
    queue.offer("k-2", "second", 9).await.unwrap();
    // The repeated offer is one item.
    let js = jetstream::new(store.client().clone());
    let work = format!("{}_WORK", store.config().namespace.to_ascii_uppercase());
    let mut work = js.get_stream(work).await.unwrap();
    assert_eq!(work.info().await.unwrap().state.messages, 2);
    let mut items = queue.items().await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..2 {
        let item = tokio::time::timeout(Duration::from_secs(10), items.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        taken.push((item.key.clone(), item.version));
        item.done().await.unwrap();
    }
    assert_eq!(taken, [("k-1".to_owned(), 7), ("k-2".to_owned(), 9)]);
    // Done work leaves the queue.
    eventually(Duration::from_secs(10), "the queue empties", || {
        let work = work.clone();
        async move {
            let mut work = work;
            (work.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;
}
