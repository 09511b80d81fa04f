//! Appends batches to the log from several tasks until killed, printing
//! `ack <first_position> <last_position> <batch_id> <size>` for every acknowledged append.
//! Each event's data names its batch and its index in it, so a reader can tell a torn batch.
//!
//! `eventstore-crash-writer <data-dir>` writes to the sled log there;
//! `eventstore-crash-writer nats://HOST:PORT <namespace>` to JetStream.

use std::io::Write;
use std::sync::Arc;

use domain::{Actor, EventId, IntegrationId, Metadata, StreamName, Timestamp};
use eventstore::{
    EventStore, ExpectedVersion, JetStreamConfig, JetStreamEventStore, NewEvent, SledEventStore,
    StoreError,
};
use rand::Rng;

const WRITERS: u64 = 8;
const STREAMS: u128 = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: eventstore-crash-writer <data-dir> | nats://HOST:PORT <namespace>";
    let target = std::env::args().nth(1).ok_or(usage)?;
    let store: Arc<dyn EventStore> = if target.starts_with("nats://") {
        let mut config = JetStreamConfig::new(target);
        config.namespace = std::env::args().nth(2).ok_or(usage)?;
        Arc::new(JetStreamEventStore::connect(config).await?)
    } else {
        Arc::new(SledEventStore::open(&target)?)
    };
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (store, stdout) = (store.clone(), stdout.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let (stream, size) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..STREAMS), rng.random_range(1..=8u64))
                };
                let stream =
                    StreamName::integration(IntegrationId(uuid::Uuid::from_u128(stream + 1)));
                let batch = uuid::Uuid::now_v7();
                let metadata = Metadata {
                    workspace: "crash".parse().expect("valid workspace id"),
                    owner: None,
                    actor: Actor::System("crash test".into()),
                    correlation_id: batch,
                    causation_id: None,
                    occurred_at: Timestamp::now(),
                };
                let events: Vec<NewEvent> = (0..size)
                    .map(|index| NewEvent {
                        id: EventId::new(),
                        event_type: "CrashTestAppended".into(),
                        schema: 1,
                        data: serde_json::json!({ "batch": batch, "size": size, "index": index }),
                        metadata: metadata.clone(),
                    })
                    .collect();
                // A log that cannot take an append right now (JetStream with too many batches
                // in flight, some of them left by an earlier writer killed mid-batch) is asked
                // again, with the same events, as any writer would.
                let mut outcome = store
                    .append(&stream, ExpectedVersion::Any, events.clone())
                    .await;
                while let Err(StoreError::Unavailable { what: reason, .. }) = &outcome {
                    eprintln!("append unavailable, trying again: {reason}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    outcome = store
                        .append(&stream, ExpectedVersion::Any, events.clone())
                        .await;
                }
                match outcome {
                    Ok(result) => {
                        let mut out = stdout.lock().expect("stdout lock is never poisoned");
                        let _ = writeln!(
                            out,
                            "ack {} {} {batch} {size}",
                            result.first_position, result.last_position
                        );
                        let _ = out.flush();
                    }
                    Err(error) => {
                        eprintln!("append failed: {error}");
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}
