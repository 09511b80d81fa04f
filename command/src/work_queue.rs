//! Work queues on JetStream, shared by the processes of a distributed service: an item offered
//! once (offers are deduplicated by id within the stream's duplicate window) is handed to one
//! taker at a time; the taker acknowledges it when the work is done, says it is still working
//! while it is, or hands it back for later. An item whose taker died comes back after the
//! acknowledgement wait, to whichever process asks next.
//!
//! One stream per service namespace (`HARMONY_WORK`, subjects `harmony.work.<queue>.<key>`)
//! with work-queue retention, and one durable pull consumer per queue.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::{Stream, StreamExt};

use eventstore::jetstream::ensure_stream;
use eventstore::{JetStreamEventStore, StoreError};

/// One queue (`sync`, …) of one service namespace.
#[derive(Clone, Debug)]
pub struct WorkQueue {
    js: jetstream::Context,
    subject_prefix: String,
    consumer: consumer::PullConsumer,
    ack_wait: Duration,
}

/// An item taken from a queue: its key, and the means to settle it.
#[derive(Debug)]
pub struct WorkItem {
    pub key: String,
    /// The version the key's stream had reached when the work was offered: the taker reads
    /// the stream at least that far (see [`eventstore::EventStore::observed`]).
    pub version: u64,
    message: jetstream::Message,
}

/// The header carrying an item's [`WorkItem::version`].
const VERSION_HEADER: &str = "Harmony-Stream-Version";

fn unavailable(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable_from(what, error)
}

fn unavailable_boxed(what: &str, error: async_nats::Error) -> StoreError {
    StoreError::Unavailable {
        what: what.into(),
        source: Some(eventstore::Source::boxed(error)),
    }
}

impl WorkQueue {
    /// Opens (creating if needed) the queue `name` beside `store`'s log. An item not
    /// acknowledged, nor kept alive with [`WorkItem::working`], within `ack_wait` goes back
    /// to the queue.
    pub async fn open(
        store: &JetStreamEventStore,
        name: &str,
        ack_wait: Duration,
    ) -> Result<Self, StoreError> {
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !valid {
            return Err(StoreError::Misconfigured(format!(
                "work queue name {name:?} must be lower-case letters and underscores"
            )));
        }
        let config = store.config();
        let js = store.context().clone();
        let stream_name = format!("{}_WORK", config.namespace.to_ascii_uppercase());
        ensure_stream(
            &js,
            stream::Config {
                name: stream_name.clone(),
                description: Some("Harmony Sync: work shared by the service's processes".into()),
                subjects: vec![format!("{}.work.>", config.namespace)],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            },
        )
        .await?;
        let subject_prefix = format!("{}.work.{name}", config.namespace);
        let stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| unavailable("opening the work stream", e))?;
        let durable = format!("{name}_workers");
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    description: Some(format!("the processes that take {name} work")),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: -1,
                    filter_subject: format!("{subject_prefix}.>"),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("opening the work queue's consumer", e))?;
        Ok(Self {
            js,
            subject_prefix,
            consumer,
            ack_wait,
        })
    }

    /// How long an item may go without word from its taker.
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// Offers work on `key`, whose stream has reached `version`. Offers with the same `id`
    /// within the duplicate window are one.
    pub async fn offer(&self, key: &str, id: &str, version: u64) -> Result<(), StoreError> {
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(StoreError::InvalidData(format!(
                "work key {key:?} must be letters, digits, - and _"
            )));
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(key.to_owned().into())
            .header(VERSION_HEADER, version.to_string().as_str())
            .message_id(id);
        self.js
            .send_publish(format!("{}.{key}", self.subject_prefix), publish)
            .await
            .map_err(|e| unavailable("offering work", e))?
            .await
            .map_err(|e| unavailable("offering work", e))?;
        Ok(())
    }

    /// The items this process takes, one at a time as it asks for the next: a process takes
    /// no more than it can work on, and leaves the rest to the others.
    pub async fn items(
        &self,
    ) -> Result<impl Stream<Item = Result<WorkItem, StoreError>> + Send + use<>, StoreError> {
        let messages = self
            .consumer
            .stream()
            .max_messages_per_batch(1)
            .messages()
            .await
            .map_err(|e| unavailable("taking work", e))?;
        Ok(messages.map(|message| {
            let message = message.map_err(|e| unavailable("taking work", e))?;
            let key = String::from_utf8_lossy(&message.payload).into_owned();
            let version = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(VERSION_HEADER))
                .and_then(|value| value.as_str().parse().ok())
                .unwrap_or(0);
            Ok(WorkItem {
                key,
                version,
                message,
            })
        }))
    }
}

impl WorkItem {
    /// The work is done: the item leaves the queue.
    pub async fn done(self) -> Result<(), StoreError> {
        self.message
            .double_ack()
            .await
            .map_err(|e| unavailable_boxed("acknowledging work", e))
    }

    /// The work goes on: the acknowledgement wait starts again.
    pub async fn working(&self) -> Result<(), StoreError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable_boxed("reporting progress on work", e))
    }

    /// Not now: the item comes back after `delay`, to any taker.
    pub async fn later(self, delay: Duration) -> Result<(), StoreError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| unavailable_boxed("handing work back", e))
    }
}
