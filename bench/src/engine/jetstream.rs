//! `harmony bench eventstore --backend jetstream`: the JetStream log beside raw async-nats
//! doing the same work on the same server in the same run.
//!
//! - `append_w1`, `append_w16`, `append_w256`: single-event appends by that many concurrent
//!   writers, each on its own stream. Raw: JetStream publishes of a body of the same size with
//!   the same headers (`Nats-Msg-Id`, the expected last subject sequence and its subject, the
//!   event headers), each awaiting its acknowledgement.
//! - `append_batch100`: 100-event appends. Raw: atomic batches of 100 of the same messages.
//! - `replay`: a subscription from position 1 through the whole log, every event decoded. Raw:
//!   an ordered consumer over the same messages, not decoded.
//! - `raw_publish_plain`: one writer publishing the same body without any header, for scale.
//!
//! The run works in a namespace of its own (`bench<random>`) and deletes its streams after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use super::{event, machine, stream as stream_name, Figure, Report, Sizes};
use eventstore::chain::ChainHash;
use eventstore::{
    EventStore, ExpectedVersion, JetStreamConfig, JetStreamEventStore, RecordedEvent, StoreError,
};

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(error.to_string())
}

/// A body of the size the log writes for the benchmark's events.
fn sample_body() -> Result<Bytes, StoreError> {
    let new = event(1);
    let recorded = RecordedEvent {
        id: new.id,
        stream: stream_name(1),
        version: 1,
        position: 1,
        event_type: new.event_type.clone(),
        schema: new.schema,
        data_json: eventstore::chain::canonical_data(&new.data)?,
        metadata: new.metadata.clone(),
        hash: ChainHash([7; 32]),
    };
    Ok(Bytes::from(eventstore::wire::encode((&recorded).into())?))
}

/// The headers the log sends with an event; the expectation (last sequence, subject filter)
/// goes on the first of an append.
fn headers(expected: Option<(u64, &str)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = uuid::Uuid::now_v7().to_string();
    headers.insert("Nats-Msg-Id", id.as_str());
    headers.insert(eventstore::wire::HEADER_EVENT_ID, id.as_str());
    headers.insert(eventstore::wire::HEADER_EVENT_TYPE, "SyncProgressed");
    headers.insert(eventstore::wire::HEADER_EVENT_SCHEMA, "1");
    headers.insert("Content-Type", eventstore::wire::CONTENT_TYPE);
    if let Some((seq, filter)) = expected {
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            seq.to_string().as_str(),
        );
        headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", filter);
    }
    headers
}

struct Raw {
    client: async_nats::Client,
    js: jetstream::Context,
    namespace: String,
    body: Bytes,
}

impl Raw {
    fn subject(&self, writer: u64, round: &str) -> (String, String) {
        let token = format!("{round}-{writer}");
        (
            format!("{}.raw.bench.ws.{token}.SyncProgressed", self.namespace),
            format!("{}.raw.*.*.{token}.*", self.namespace),
        )
    }

    async fn single(
        self: &Arc<Self>,
        writers: u64,
        total: u64,
        round: &str,
    ) -> Result<f64, StoreError> {
        let per_writer = (total / writers).max(1);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let raw = Arc::clone(self);
            let (subject, filter) = raw.subject(writer, round);
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for _ in 0..per_writer {
                    let ack = raw
                        .js
                        .publish_with_headers(
                            subject.clone(),
                            headers(Some((last, &filter))),
                            raw.body.clone(),
                        )
                        .await
                        .map_err(failed)?
                        .await
                        .map_err(failed)?;
                    last = ack.sequence;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await.map_err(failed)??;
        }
        Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64())
    }

    async fn plain(&self, total: u64) -> Result<f64, StoreError> {
        let subject = format!("{}.raw.bench.ws.plain", self.namespace);
        let started = Instant::now();
        for _ in 0..total {
            self.js
                .publish(subject.clone(), self.body.clone())
                .await
                .map_err(failed)?
                .await
                .map_err(failed)?;
        }
        Ok(total as f64 / started.elapsed().as_secs_f64())
    }

    /// `batches` atomic batches of 100 over 8 subjects; the seconds they took.
    async fn batches(&self, batches: u64, round: u64) -> Result<f64, StoreError> {
        let started = Instant::now();
        let mut last: std::collections::HashMap<u64, u64> = Default::default();
        for batch in 0..batches {
            let (subject, filter) = self.subject(batch % 8, &format!("batch{round}"));
            let batch_id = uuid::Uuid::now_v7().simple().to_string();
            let expected = last.get(&(batch % 8)).copied().unwrap_or(0);
            for i in 0..100u64 {
                let mut headers = headers((i == 0).then_some((expected, filter.as_str())));
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
                if i < 99 {
                    self.client
                        .publish_with_headers(subject.clone(), headers, self.body.clone())
                        .await
                        .map_err(failed)?;
                } else {
                    headers.insert("Nats-Batch-Commit", "1");
                    let reply = self
                        .client
                        .request_with_headers(subject.clone(), headers, self.body.clone())
                        .await
                        .map_err(failed)?;
                    let ack: serde_json::Value =
                        serde_json::from_slice(&reply.payload).map_err(failed)?;
                    let seq = ack["seq"].as_u64().ok_or_else(|| {
                        StoreError::storage(format!("a raw batch was refused: {ack}"))
                    })?;
                    last.insert(batch % 8, seq);
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Reads `count` messages of the events stream through an ordered consumer.
    async fn replay(&self, stream: &str, count: u64) -> Result<f64, StoreError> {
        let started = Instant::now();
        let mut messages = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(failed)?
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .map_err(failed)?
            .messages()
            .await
            .map_err(failed)?;
        let mut seen = 0;
        while seen < count {
            let message = messages
                .next()
                .await
                .ok_or_else(|| StoreError::unavailable("the consumer ended"))?
                .map_err(failed)?;
            std::hint::black_box(&message.payload);
            seen += 1;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    }
}

async fn ours_replay(store: &JetStreamEventStore, count: u64) -> Result<f64, StoreError> {
    let started = Instant::now();
    let mut events = store.subscribe(1);
    let mut seen = 0;
    while seen < count {
        let event = events
            .next()
            .await
            .ok_or_else(|| StoreError::unavailable("the subscription ended"))??;
        std::hint::black_box(&event);
        seen += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Runs the suite against the JetStream server at `url`.
pub async fn run(
    url: &str,
    replicas: usize,
    sizes: Sizes,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, StoreError> {
    let mut config = JetStreamConfig::new(url);
    config.replicas = replicas;
    config.namespace = format!("bench{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    config.request_timeout = Duration::from_secs(30);
    let store = JetStreamEventStore::connect(config.clone()).await?;
    let js = jetstream::new(store.client().clone());
    let raw_stream = format!("{}_RAW", config.namespace.to_ascii_uppercase());
    let mut raw_config = config_like_events(&config);
    raw_config.name = raw_stream.clone();
    raw_config.subjects = vec![format!("{}.raw.>", config.namespace)];
    js.create_stream(raw_config).await.map_err(failed)?;
    let raw = Arc::new(Raw {
        client: store.client().clone(),
        js: js.clone(),
        namespace: config.namespace.clone(),
        body: sample_body()?,
    });
    let result = measure(&store, &raw, &config, sizes, progress).await;
    for name in [
        config.events_stream(),
        raw_stream,
        format!("KV_{}", config.snapshots_bucket()),
    ] {
        if let Err(error) = js.delete_stream(&name).await {
            tracing::warn!(%error, stream = %name, "cannot delete the benchmark's stream");
        }
    }
    let figures = result?;
    let version = store.client().server_info().version;
    Ok(Report {
        suite: "eventstore".into(),
        backend: if replicas > 1 {
            format!("jetstream (nats-server {version}, {replicas} replicas)")
        } else {
            format!("jetstream (nats-server {version})")
        },
        machine: machine(),
        figures,
    })
}

fn config_like_events(config: &JetStreamConfig) -> stream::Config {
    stream::Config {
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        allow_atomic_publish: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

async fn measure(
    store: &JetStreamEventStore,
    raw: &Arc<Raw>,
    config: &JetStreamConfig,
    sizes: Sizes,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Figure>, StoreError> {
    let mut figures = Vec::new();
    for (writers, total) in [1u64, 16, 256].into_iter().zip(sizes.single_appends) {
        progress(&format!(
            "append_w{writers}: {total} appends, and as many raw publishes"
        ));
        // Alternate and keep the best of two rounds each, so neither side only meets a cold
        // server or a busy disk.
        let (mut ours, mut theirs) = (0f64, 0f64);
        for round in 0..2 {
            theirs = theirs.max(
                raw.single(writers, total / 2, &format!("w{writers}r{round}"))
                    .await?,
            );
            ours = ours.max(super::ours_single(store, writers, total / 2).await?);
        }
        figures.push(Figure::against_raw(
            &format!("append_w{writers}"),
            ours,
            "events/s",
            theirs,
        ));
    }
    progress(&format!("append_batch100: {} batches each", sizes.batches));
    // Ten short alternating rounds, timed in total: the disk's and the server's drift over a
    // run falls on both sides alike.
    const ROUNDS: u64 = 10;
    let per_round = (sizes.batches / ROUNDS).max(1);
    let (mut ours_time, mut raw_time) = (0f64, 0f64);
    for round in 0..ROUNDS {
        raw_time += raw.batches(per_round, round).await?;
        // The events are made before the clock starts: the raw side gets its bodies ready-made.
        let batches: Vec<Vec<_>> = (0..per_round)
            .map(|batch| (0..100).map(|i| event(batch * 100 + i)).collect())
            .collect();
        let started = Instant::now();
        for (batch, events) in (0..).zip(batches) {
            store
                .append(
                    &stream_name(batch % 8 + 5000 + round * 10),
                    ExpectedVersion::Any,
                    events,
                )
                .await?;
        }
        ours_time += started.elapsed().as_secs_f64();
    }
    let total = (per_round * ROUNDS * 100) as f64;
    let (ours, theirs) = (total / ours_time, total / raw_time);
    figures.push(Figure::against_raw(
        "append_batch100",
        ours,
        "events/s",
        theirs,
    ));

    super::top_up(store, sizes.replay_events, 500, progress).await?;
    progress("replay: reading everything back");
    let head = store.head_position().await?;
    let (mut ours, mut theirs) = (0f64, 0f64);
    for _ in 0..2 {
        theirs = theirs.max(raw.replay(&config.events_stream(), head).await?);
        ours = ours.max(ours_replay(store, head).await?);
    }
    figures.push(Figure::against_raw("replay", ours, "events/s", theirs));

    progress("raw_publish_plain");
    let plain = raw.plain(sizes.single_appends[0] / 2).await?;
    figures.push(Figure {
        name: "raw_publish_plain".into(),
        value: plain.round(),
        unit: "events/s".into(),
        raw: None,
        ratio: None,
    });
    Ok(figures)
}
