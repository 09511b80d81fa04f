//! The distributed backend: the event log on NATS JetStream.
//!
//! Every event is one message on the stream `HARMONY_EVENTS`, on the subject
//! `harmony.events.<workspace>.<owner>.<integration>.<type>` (`<owner>` is `ws` for a workspace
//! integration and the user id for a personal one) or
//! `harmony.events.<workspace>.ws.policy.<type>` for a workspace's policy stream, so that a
//! consumer can pick events by workspace, owner, integration or type from the subject alone.
//! The body is the CloudEvents envelope of [`crate::wire`].
//!
//! - **Position** = the JetStream stream sequence.
//! - **Optimistic concurrency**: each append carries `Nats-Expected-Last-Subject-Sequence`,
//!   checked by the server against every subject of the stream (the integration's subjects are
//!   matched with a wildcard through `Nats-Expected-Last-Subject-Sequence-Subject`), so two
//!   processes can never both append the same version. A refusal becomes
//!   [`StoreError::Conflict`], as on sled.
//! - **Atomic batches**: a command's several events go out as one JetStream atomic batch
//!   (`allow_atomic` streams, server 2.12+): all are stored, contiguously, or none is; consumers
//!   still see one message per event.
//! - **Idempotency**: `Nats-Msg-Id` = the event id. Within the stream's duplicate window the
//!   server answers a re-sent message with its original sequence (a re-sent atomic batch is
//!   refused as a duplicate instead); past the window, an append whose ids are older than the
//!   window first looks for them in the log. Either way a retry returns the original result and
//!   stores nothing twice. The lookup reads the log from the ids' time (they are UUID v7), so it
//!   costs little and happens only for retries.
//! - **Durability**: the server acknowledges once the message is stored; with the repository's
//!   `nats.conf` (`sync_interval: always`) that is after an fsync.
//! - **Snapshots** live in the key-value bucket `HARMONY_SNAPSHOTS`: derived data, checked
//!   against the chain on load.
//!
//! The names above use the default namespace `harmony`; [`JetStreamConfig::namespace`] changes
//! it, so that several independent logs can share one server (tests do).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{HeaderMap, Message};
use async_trait::async_trait;
use bytes::Bytes;
use domain::{EventId, StreamName, WorkspaceId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::chain::link_parts;
use crate::chain::ChainHash;
use crate::error::StoreError;
use crate::types::{AppendResult, EventStream, ExpectedVersion, NewEvent, RecordedEvent, Snapshot};
use crate::wire::{self, EventParts};
use crate::EventStore;

mod append;
mod config;
mod reads;
mod setup;
mod subscription;
mod tail;

pub use config::JetStreamConfig;
pub(crate) use reads::{direct_batch, DirectBatch};
use setup::ensure_bucket;
pub use setup::ensure_stream;
pub(crate) use setup::{aging_stream, beside};
use subscription::subscription;
use tail::Tail;

/// The event log on JetStream. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: JetStreamConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    snapshots: kv::Store,
    tails: Mutex<HashMap<StreamName, Tail>>,
    /// Versions streams are known to have reached without this process holding their tail
    /// ([`EventStore::observed`]); an entry goes once a read shows it.
    floors: Mutex<HashMap<StreamName, u64>>,
    /// Known (version → sequence) points of each stream, so reading a stream from a version
    /// does not start at its first event.
    marks: Mutex<HashMap<StreamName, BTreeMap<u64, u64>>>,
}

impl std::fmt::Debug for JetStreamEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamEventStore")
            .field("url", &self.inner.config.url)
            .field("stream", &self.inner.stream)
            .finish_non_exhaustive()
    }
}

/// How long a read waits for the replicas to show this process's own last append.
const REPLICA_CATCH_UP: Duration = Duration::from_secs(5);
const REPLICA_POLL: Duration = Duration::from_millis(10);

fn unavailable(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable_from(what, error)
}

/// A status a JetStream request was answered with instead of data, as an error: timeouts and
/// "unavailable" (503: no server answers for the stream, as between leaders) pass with time;
/// anything else is a fault.
fn status_error(
    what: &str,
    status: async_nats::StatusCode,
    description: Option<String>,
) -> StoreError {
    let reason = format!("{what}: {status} {}", description.unwrap_or_default());
    if matches!(status.as_u16(), 408 | 503 | 504) {
        StoreError::unavailable(reason)
    } else {
        StoreError::storage(reason)
    }
}

impl JetStreamEventStore {
    /// Connects, checks that JetStream is enabled, and creates the stream and the snapshot
    /// bucket if they do not exist. An unreachable server, JetStream disabled, or a stream
    /// found with an incompatible configuration is an error; an existing stream is never
    /// changed.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, StoreError> {
        let valid_namespace = !config.namespace.is_empty()
            && config
                .namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_namespace {
            return Err(StoreError::Misconfigured(format!(
                "namespace {:?} must be lower-case letters, digits and underscores",
                config.namespace
            )));
        }
        let url = config.url.clone();
        // One server, or a cluster's servers comma-separated: the client connects to any
        // and fails over between them.
        let servers = url
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .map(|server| {
                server.parse::<async_nats::ServerAddr>().map_err(|error| {
                    StoreError::Misconfigured(format!("{server:?} is not a NATS URL: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name("harmony-sync")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("lost the connection to NATS; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            })
            .connect(servers)
            .await
            .map_err(|error| {
                StoreError::unavailable_from(format!("cannot reach NATS at {url}"), error)
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        // A server without JetStream is an error at once; one whose JetStream does not answer
        // yet, or answers without a leader for the streams, is waited for.
        let deadline = tokio::time::Instant::now() + config.ready_timeout;
        let snapshots = loop {
            let ready = async {
                js.query_account().await.map_err(|error| {
                    let waiting = error.kind() == jetstream::context::AccountErrorKind::TimedOut;
                    let error = StoreError::unavailable_from(
                        format!(
                            "JetStream is not available at {url} (is it enabled in the server \
                             configuration?)"
                        ),
                        error,
                    );
                    (waiting, error)
                })?;
                ensure_stream(&js, config.events_stream_config())
                    .await
                    .map_err(|error| (error.is_retryable(), error))?;
                ensure_bucket(&js, &config)
                    .await
                    .map_err(|error| (error.is_retryable(), error))
            }
            .await;
            match ready {
                Ok(snapshots) => break snapshots,
                Err((true, error)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "JetStream is not ready yet; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((_, error)) => return Err(error),
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                stream: config.events_stream(),
                config,
                client,
                js,
                snapshots,
                tails: Mutex::new(HashMap::new()),
                floors: Mutex::new(HashMap::new()),
                marks: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration this store runs with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.inner.config
    }

    /// The NATS client, for publishing records or consuming beside the log.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context, for the work queues and checkpoints beside the log.
    pub fn context(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The subject an event of `stream` of type `event_type` with `metadata` is published on.
    pub fn subject_for(
        &self,
        stream: &StreamName,
        event_type: &str,
        metadata: &domain::Metadata,
    ) -> Result<String, StoreError> {
        let type_ok = !event_type.is_empty()
            && event_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !type_ok {
            return Err(StoreError::InvalidData(format!(
                "event type {event_type:?} must be letters, digits and underscores"
            )));
        }
        let ns = &self.inner.config.namespace;
        let ws = metadata.workspace.as_str();
        match stream_token(stream)? {
            StreamToken::Integration(token) => {
                let owner = metadata.owner.as_ref().map_or("ws", |o| o.as_str());
                Ok(format!("{ns}.events.{ws}.{owner}.{token}.{event_type}"))
            }
            StreamToken::Policy(workspace) => {
                if workspace != ws {
                    return Err(StoreError::InvalidData(format!(
                        "an event of {stream} carries workspace {ws}"
                    )));
                }
                Ok(format!("{ns}.events.{ws}.ws.policy.{event_type}"))
            }
        }
    }

    /// The filter matching every subject `stream`'s events may have (any owner, any type).
    fn stream_filter(&self, stream: &StreamName) -> Result<String, StoreError> {
        let ns = &self.inner.config.namespace;
        Ok(match stream_token(stream)? {
            StreamToken::Integration(token) => format!("{ns}.events.*.*.{token}.*"),
            StreamToken::Policy(ws) => format!("{ns}.events.{ws}.ws.policy.*"),
        })
    }
}

enum StreamToken<'a> {
    Integration(&'a str),
    Policy(&'a str),
}

fn stream_token(stream: &StreamName) -> Result<StreamToken<'_>, StoreError> {
    let token_ok = |token: &str| {
        !token.is_empty()
            && token != "policy"
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if let Some(token) = stream.as_str().strip_prefix("integration-") {
        if token_ok(token) {
            return Ok(StreamToken::Integration(token));
        }
    } else if let Some(ws) = stream.as_str().strip_prefix("workspace-") {
        if token_ok(ws) {
            return Ok(StreamToken::Policy(ws));
        }
    }
    Err(StoreError::InvalidData(format!(
        "{stream} is not a stream name the log can place on a subject"
    )))
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_events(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.read_stream_once(stream, from_version, limit).await?;
        // A direct get may be answered by a replica that has not yet stored this process's
        // own last append, or an event this process was told of: read again until it shows
        // it, so a process reads its writes and what it acts on.
        let Some(known) = self.known_version(stream) else {
            return Ok(events);
        };
        let mut waited = Duration::ZERO;
        let shown = |events: &[RecordedEvent]| events.iter().any(|e| e.version >= known);
        while events.len() < limit && known >= from_version.max(1) && !shown(&events) {
            if waited >= REPLICA_CATCH_UP {
                return Err(StoreError::unavailable(format!(
                    "the replicas of {stream} have not caught up with its version {known}"
                )));
            }
            tokio::time::sleep(REPLICA_POLL).await;
            waited += REPLICA_POLL;
            events = self.read_stream_once(stream, from_version, limit).await?;
        }
        if shown(&events) {
            self.floor_reached(stream, known);
        }
        Ok(events)
    }

    fn observed(&self, stream: &StreamName, version: u64) {
        self.raise_floor(stream, version);
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_filtered(&self.inner.config.events_subjects(), from_position, limit)
            .await
    }

    async fn read_workspace(
        &self,
        workspace: &WorkspaceId,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // The workspace is a token of every event's subject: the server reads its messages
        // alone.
        let filter = format!(
            "{}.events.{}.>",
            self.inner.config.namespace,
            workspace.as_str()
        );
        self.read_filtered(&filter, from_position, limit).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let stream = self
            .inner
            .js
            .get_stream(&self.inner.stream)
            .await
            .map_err(|error| unavailable("reading the log's head", error))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        let tail = self.fetch_tail(stream).await?;
        if let Some(tail) = &tail {
            self.remember_tail(stream, tail.clone());
        }
        Ok(tail.map(|t| t.version).filter(|v| *v > 0))
    }

    fn subscribe(&self, from_position: u64) -> EventStream {
        subscription(self.clone(), from_position.max(1))
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, StoreError> {
        let entry = self
            .inner
            .snapshots
            .get(stream.as_str())
            .await
            .map_err(|error| unavailable("reading a snapshot", error))?;
        Ok(entry.and_then(|bytes| Snapshot::decode(stream, &bytes)))
    }

    async fn save_snapshot(
        &self,
        stream: &StreamName,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner
            .snapshots
            .put(stream.as_str(), Bytes::from(snapshot.encode()?))
            .await
            .map_err(|error| unavailable("saving a snapshot", error))?;
        Ok(())
    }
}
