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
use domain::{EventId, StreamName};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::chain::link_parts;
use crate::chain::ChainHash;
use crate::error::StoreError;
use crate::types::{AppendResult, EventStream, ExpectedVersion, NewEvent, RecordedEvent, Snapshot};
use crate::wire::{self, EventParts};
use crate::EventStore;

/// How to reach JetStream and how the streams are set up.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// The server, e.g. `nats://127.0.0.1:4222` (several comma-separated URLs for a cluster).
    pub url: String,
    /// The prefix of every stream, subject and bucket name: `harmony` gives `HARMONY_EVENTS`
    /// and `harmony.events.…`. A lower-case slug.
    pub namespace: String,
    /// Replicas of each stream: 1 on a single server, 3 in production.
    pub replicas: usize,
    /// How long the server remembers message ids to drop re-sent messages.
    pub duplicate_window: Duration,
    /// How long synced record changes stay on the records stream.
    pub records_max_age: Duration,
    /// How long a request (an append, a read) may wait for the server before it fails with a
    /// retryable error. Appends never hang longer than this, even while the server is away.
    pub request_timeout: Duration,
    /// How long the first connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a reachable server's JetStream may take to answer at start (a cluster
    /// electing its leaders after a restart) before the start fails.
    pub ready_timeout: Duration,
}

impl JetStreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "harmony".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            records_max_age: Duration::from_secs(30 * 24 * 3600),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// The events stream's name, e.g. `HARMONY_EVENTS`.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.namespace.to_ascii_uppercase())
    }

    /// The records stream's name, e.g. `HARMONY_RECORDS`.
    pub fn records_stream(&self) -> String {
        format!("{}_RECORDS", self.namespace.to_ascii_uppercase())
    }

    /// The snapshots bucket's name, e.g. `HARMONY_SNAPSHOTS`.
    pub fn snapshots_bucket(&self) -> String {
        format!("{}_SNAPSHOTS", self.namespace.to_ascii_uppercase())
    }

    /// Every subject of the events stream, e.g. `harmony.events.>`.
    pub fn events_subjects(&self) -> String {
        format!("{}.events.>", self.namespace)
    }

    /// The stream configuration this process requires.
    fn events_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.events_stream(),
            description: Some("Harmony Sync: the integration and workspace event log".into()),
            subjects: vec![self.events_subjects()],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            duplicate_window: self.duplicate_window,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        }
    }
}

/// What this process knows of a stream's end, so that an append needs one round trip.
#[derive(Clone, Debug)]
struct Tail {
    version: u64,
    /// The last sequence of any message on the stream's subjects (the one to expect).
    last_seq: u64,
    hash: ChainHash,
}

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

/// A JetStream API answer to a publish.
#[derive(Debug, Deserialize)]
struct PubAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream error codes the log acts on.
mod codes {
    /// `Nats-Expected-Last-Subject-Sequence` did not hold.
    pub(super) const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// The same, as a clustered stream's leader words it (without the sequence it holds).
    pub(super) const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
    /// A re-sent atomic batch: one of its message ids is already stored.
    pub(super) const BATCH_DUPLICATE_MSG_ID: u64 = 10201;
    /// The server holds only part of a batch (the rest went to a connection that dropped, or
    /// the batch timed out); nothing of it is stored.
    pub(super) const BATCH_INCOMPLETE: u64 = 10176;
    /// Too many batches in flight on the server right now.
    pub(super) const BATCH_TOO_MANY_INFLIGHT: u64 = 10211;
}

enum Published {
    Stored { last_seq: u64 },
    Duplicate { seq: u64 },
    WrongLastSequence,
    BatchHasStoredIds,
}

/// Marks kept per stream: every this many versions.
const MARK_EVERY: u64 = 256;
/// How far the server's clock may be behind the clock that minted an event id.
const CLOCK_SKEW: Duration = Duration::from_secs(10);
/// A single append retries internally (for `Any`, or after a stale cached tail) this often.
const MAX_ATTEMPTS: usize = 16;

fn unavailable(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {error}"))
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
                StoreError::Unavailable(format!("cannot reach NATS at {url}: {error}"))
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
                    let error = StoreError::Unavailable(format!(
                        "JetStream is not available at {url} (is it enabled in the server \
                         configuration?): {error}"
                    ));
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

    /// The JetStream context, for the work queues beside the log.
    pub(crate) fn context(&self) -> &jetstream::Context {
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

    /// Up to `batch` events from sequence `from` (or from `start_time`) on `filter`.
    /// Undecodable messages come back as errors in place.
    async fn direct_batch(
        &self,
        from: Option<u64>,
        start_time: Option<time::OffsetDateTime>,
        filter: &str,
        batch: usize,
    ) -> Result<Vec<(u64, Result<RecordedEvent, StoreError>)>, StoreError> {
        let raw = direct_batch(
            &self.inner.client,
            &self.inner.stream,
            self.inner.config.request_timeout,
            DirectBatch {
                from,
                start_time,
                filter,
                batch,
            },
        )
        .await?;
        Ok(raw
            .into_iter()
            .map(|(seq, payload)| (seq, wire::decode(&payload, seq)))
            .collect())
    }

    /// The last event of a stream (and the last sequence on its subjects), from the server.
    async fn fetch_tail(&self, stream: &StreamName) -> Result<Option<Tail>, StoreError> {
        let filter = self.stream_filter(stream)?;
        #[derive(Serialize)]
        struct Request<'a> {
            last_by_subj: &'a str,
        }
        let body = serde_json::to_vec(&Request {
            last_by_subj: &filter,
        })
        .map_err(|error| StoreError::Storage(error.to_string()))?;
        let message = self
            .inner
            .client
            .request(
                format!("$JS.API.DIRECT.GET.{}", self.inner.stream),
                Bytes::from(body),
            )
            .await
            .map_err(|error| unavailable("reading a stream's end", error))?;
        if let Some(status) = message.status {
            if status.as_u16() == 404 {
                return Ok(None);
            }
            return Err(StoreError::Storage(format!(
                "reading a stream's end: {status} {}",
                message.description.unwrap_or_default()
            )));
        }
        let seq = header_u64(&message, "Nats-Sequence").ok_or_else(|| {
            StoreError::Storage("a direct get answered without Nats-Sequence".into())
        })?;
        let tail = match wire::decode(&message.payload, seq) {
            Ok(event) if event.stream == *stream => Tail {
                version: event.version,
                last_seq: seq,
                hash: event.hash,
            },
            _ => {
                // The last message is not one of ours (someone else published there): the
                // stream's end is its last readable event, and the sequence to expect is still
                // the foreign message's.
                tracing::warn!(%stream, seq, "skipping an undecodable message at the end of a stream");
                let events = self.read_stream(stream, 1, usize::MAX).await?;
                match events.last() {
                    Some(event) => Tail {
                        version: event.version,
                        last_seq: seq,
                        hash: event.hash,
                    },
                    None => Tail {
                        version: 0,
                        last_seq: seq,
                        hash: ChainHash::GENESIS,
                    },
                }
            }
        };
        Ok(Some(tail))
    }

    fn cached_tail(&self, stream: &StreamName) -> Option<Tail> {
        self.inner
            .tails
            .lock()
            .expect("the tail cache lock is never poisoned")
            .get(stream)
            .cloned()
    }

    fn remember_tail(&self, stream: &StreamName, tail: Tail) {
        let mut tails = self
            .inner
            .tails
            .lock()
            .expect("the tail cache lock is never poisoned");
        match tails.get(stream) {
            Some(known) if known.last_seq >= tail.last_seq => {}
            _ => {
                tails.insert(stream.clone(), tail);
            }
        }
    }

    fn forget_tail(&self, stream: &StreamName) {
        self.inner
            .tails
            .lock()
            .expect("the tail cache lock is never poisoned")
            .remove(stream);
    }

    fn remember_mark(&self, stream: &StreamName, version: u64, seq: u64) {
        if !version.is_multiple_of(MARK_EVERY) {
            return;
        }
        self.inner
            .marks
            .lock()
            .expect("the marks lock is never poisoned")
            .entry(stream.clone())
            .or_default()
            .insert(version, seq);
    }

    /// The sequence to start reading `stream` at to find `version` and what follows.
    fn start_for(&self, stream: &StreamName, version: u64) -> u64 {
        self.inner
            .marks
            .lock()
            .expect("the marks lock is never poisoned")
            .get(stream)
            .and_then(|marks| marks.range(..version).next_back())
            .map_or(1, |(_, seq)| seq + 1)
    }

    /// The stored events with these ids, looked up in the log from the ids' time on.
    async fn find_stored(
        &self,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, RecordedEvent>, StoreError> {
        let wanted: HashSet<EventId> = ids.iter().copied().collect();
        let oldest = ids
            .iter()
            .filter_map(|id| id.0.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                time::OffsetDateTime::UNIX_EPOCH + time::Duration::new(secs as i64, nanos as i32)
            })
            .min()
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            - CLOCK_SKEW;
        let filter = self.inner.config.events_subjects();
        let mut found = HashMap::new();
        let mut from: Option<u64> = None;
        const PAGE: usize = 1024;
        loop {
            let page = if let Some(seq) = from {
                self.direct_batch(Some(seq), None, &filter, PAGE).await?
            } else {
                self.direct_batch(None, Some(oldest), &filter, PAGE).await?
            };
            let len = page.len();
            for (seq, event) in page {
                from = Some(seq + 1);
                if let Ok(event) = event {
                    if wanted.contains(&event.id) {
                        found.insert(event.id, event);
                    }
                }
            }
            if found.len() == wanted.len() || len < PAGE {
                return Ok(found);
            }
        }
    }

    /// The original result of a batch whose ids may already be stored: `Some` if every one is,
    /// as one batch of `stream`; `None` if none is; a mismatch otherwise.
    async fn original_result(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
    ) -> Result<Option<AppendResult>, StoreError> {
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        let found = self.find_stored(&ids).await?;
        if found.is_empty() {
            return Ok(None);
        }
        let stored: Option<Vec<&RecordedEvent>> = ids.iter().map(|id| found.get(id)).collect();
        let first_found = ids
            .iter()
            .find(|id| found.contains_key(id))
            .copied()
            .expect("found is not empty");
        let Some(stored) = stored else {
            return Err(StoreError::IdempotencyMismatch { id: first_found });
        };
        let one_batch = stored.iter().all(|e| e.stream == *stream)
            && stored
                .windows(2)
                .all(|w| w[1].version == w[0].version + 1 && w[1].position == w[0].position + 1);
        if !one_batch {
            return Err(StoreError::IdempotencyMismatch { id: first_found });
        }
        let (first, last) = (stored[0], stored[stored.len() - 1]);
        Ok(Some(AppendResult {
            first_version: first.version,
            last_version: last.version,
            first_position: first.position,
            last_position: last.position,
        }))
    }

    /// Sends `count` messages made by `build`: one publish, or an atomic batch. A message that
    /// cannot be built stops the batch before its commit, so the server stores none of it.
    async fn publish(
        &self,
        count: usize,
        mut build: impl FnMut(usize) -> Result<(String, HeaderMap, Bytes), StoreError>,
    ) -> Result<Published, StoreError> {
        let client = &self.inner.client;
        let batch_id = (count > 1).then(|| uuid::Uuid::now_v7().simple().to_string());
        let mut reply = None;
        for index in 0..count {
            let (subject, mut headers, body) = build(index)?;
            if let Some(batch_id) = &batch_id {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            }
            if index + 1 < count {
                client
                    .publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|error| unavailable("publishing an event", error))?;
            } else {
                if batch_id.is_some() {
                    headers.insert("Nats-Batch-Commit", "1");
                }
                reply = Some(
                    client
                        .request_with_headers(subject, headers, body)
                        .await
                        .map_err(|error| match error.kind() {
                            async_nats::RequestErrorKind::NoResponders => StoreError::Unavailable(
                                format!("no JetStream stream {} answers", self.inner.stream),
                            ),
                            _ => unavailable("appending events", error),
                        })?,
                );
            }
        }
        let reply = reply.expect("an append has at least one event");
        if let Some(status) = reply.status {
            // A status instead of an acknowledgement (503: the stream is not there right now,
            // as while a server restarts): nothing was stored.
            return Err(StoreError::Unavailable(format!(
                "JetStream answered the append with status {status}"
            )));
        }
        let ack: PubAck = serde_json::from_slice(&reply.payload).map_err(|error| {
            StoreError::Unavailable(format!(
                "an append was answered without an acknowledgement: {error}"
            ))
        })?;
        if let Some(error) = ack.error {
            return match error.err_code {
                codes::WRONG_LAST_SEQUENCE | codes::WRONG_LAST_SEQUENCE_CONSTANT => {
                    Ok(Published::WrongLastSequence)
                }
                codes::BATCH_DUPLICATE_MSG_ID => Ok(Published::BatchHasStoredIds),
                // Nothing was stored: the same append may be tried again.
                codes::BATCH_INCOMPLETE | codes::BATCH_TOO_MANY_INFLIGHT => {
                    Err(StoreError::Unavailable(format!(
                        "JetStream did not take the batch, nothing was stored: {} (error {})",
                        error.description, error.err_code
                    )))
                }
                code => Err(StoreError::Storage(format!(
                    "JetStream refused the append: {} (error {code})",
                    error.description
                ))),
            };
        }
        if ack.duplicate {
            return Ok(Published::Duplicate { seq: ack.seq });
        }
        if let Some(stored) = ack.count {
            if stored != count as u64 {
                return Err(StoreError::Storage(format!(
                    "JetStream stored {stored} of a batch of {count}"
                )));
            }
        }
        Ok(Published::Stored { last_seq: ack.seq })
    }

    /// Reads one stored message by sequence.
    async fn event_at(&self, seq: u64) -> Result<Option<RecordedEvent>, StoreError> {
        let page = self
            .direct_batch(Some(seq), None, &self.inner.config.events_subjects(), 1)
            .await?;
        Ok(page
            .into_iter()
            .find(|(s, _)| *s == seq)
            .and_then(|(_, event)| event.ok()))
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

/// What a batched direct get asks for: up to `batch` messages on `filter` from sequence
/// `from`, or from `start_time`.
pub(crate) struct DirectBatch<'a> {
    pub(crate) from: Option<u64>,
    pub(crate) start_time: Option<time::OffsetDateTime>,
    pub(crate) filter: &'a str,
    pub(crate) batch: usize,
}

/// The messages a batched direct get (server 2.11+) returns from `stream`: (sequence,
/// payload), in order, in one request.
pub(crate) async fn direct_batch(
    client: &async_nats::Client,
    stream: &str,
    timeout: Duration,
    ask: DirectBatch<'_>,
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    #[derive(Serialize)]
    struct Request<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        start_time: Option<time::OffsetDateTime>,
        next_by_subj: &'a str,
        batch: usize,
    }
    let request = serde_json::to_vec(&Request {
        seq: ask.from,
        start_time: ask.start_time,
        next_by_subj: ask.filter,
        batch: ask.batch,
    })
    .map_err(|error| StoreError::Storage(error.to_string()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| unavailable("subscribing for a read", error))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(request),
        )
        .await
        .map_err(|error| unavailable("requesting a read", error))?;
    let mut out = Vec::with_capacity(ask.batch.min(1024));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, replies.next())
            .await
            .map_err(|_| {
                StoreError::Unavailable("reading the log timed out; the server may be away".into())
            })?
            .ok_or_else(|| StoreError::Unavailable("the connection closed mid-read".into()))?;
        if let Some(status) = message.status {
            // 404: nothing (more) to read; 204 EOB: the end of the batch.
            if status.as_u16() == 404 || status.as_u16() == 204 {
                break;
            }
            return Err(StoreError::Storage(format!(
                "reading the log: {status} {}",
                message.description.unwrap_or_default()
            )));
        }
        let Some(seq) = header_u64(&message, "Nats-Sequence") else {
            // An empty message without a sequence ends the batch.
            break;
        };
        out.push((seq, message.payload));
        if out.len() >= ask.batch {
            break;
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(out)
}

fn header_u64(message: &Message, name: &str) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(name)
        .and_then(|value| value.as_str().parse().ok())
}

/// Creates the stream, or checks that the one found is compatible with `wanted`.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<(), StoreError> {
    match js.get_stream(&wanted.name).await {
        Ok(mut existing) => {
            let found = existing
                .info()
                .await
                .map_err(|error| unavailable("reading the stream's configuration", error))?
                .config
                .clone();
            let mismatches = incompatibilities(&found, &wanted);
            if mismatches.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Misconfigured(format!(
                    "the JetStream stream {} exists with a configuration this service cannot use \
                     ({}); it is left unchanged: fix or remove it by hand",
                    wanted.name,
                    mismatches.join("; ")
                )))
            }
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(inner)
                    if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted.clone())
                .await
                .map(|_| ())
                .or_else(|error| {
                    // Another process may have created it in between.
                    if error.to_string().contains("already in use") {
                        Ok(())
                    } else {
                        Err(unavailable(
                            &format!("creating stream {}", wanted.name),
                            error,
                        ))
                    }
                })
        }
        Err(error) => Err(unavailable(
            &format!("looking up stream {}", wanted.name),
            error,
        )),
    }
}

/// What differs between a found stream and the one required, in words.
fn incompatibilities(found: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    fn differs<T: PartialEq + std::fmt::Debug>(
        out: &mut Vec<String>,
        what: &str,
        found: &T,
        wanted: &T,
    ) {
        if found != wanted {
            out.push(format!("{what} is {found:?}, needs {wanted:?}"));
        }
    }
    let mut out = Vec::new();
    differs(&mut out, "subjects", &found.subjects, &wanted.subjects);
    differs(&mut out, "storage", &found.storage, &wanted.storage);
    differs(
        &mut out,
        "replicas",
        &found.num_replicas,
        &wanted.num_replicas,
    );
    differs(&mut out, "retention", &found.retention, &wanted.retention);
    differs(
        &mut out,
        "deny_delete",
        &found.deny_delete,
        &wanted.deny_delete,
    );
    differs(
        &mut out,
        "deny_purge",
        &found.deny_purge,
        &wanted.deny_purge,
    );
    differs(
        &mut out,
        "allow_direct",
        &found.allow_direct,
        &wanted.allow_direct,
    );
    differs(
        &mut out,
        "allow_atomic",
        &found.allow_atomic_publish,
        &wanted.allow_atomic_publish,
    );
    differs(
        &mut out,
        "duplicate_window",
        &found.duplicate_window,
        &wanted.duplicate_window,
    );
    differs(&mut out, "max_age", &found.max_age, &wanted.max_age);
    // Limits that would drop messages before their age.
    let unlimited =
        found.max_messages <= 0 && found.max_bytes <= 0 && found.max_messages_per_subject <= 0;
    if !unlimited {
        out.push(
            "limits are set (max_msgs, max_bytes or max_msgs_per_subject), needs none: nothing \
             may be dropped before its age"
                .into(),
        );
    }
    out
}

async fn ensure_bucket(
    js: &jetstream::Context,
    config: &JetStreamConfig,
) -> Result<kv::Store, StoreError> {
    let bucket = config.snapshots_bucket();
    match js.get_key_value(&bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description:
                    "Harmony Sync: aggregate snapshots (derived, checked on load) and checkpoints"
                        .into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|error| unavailable(&format!("creating bucket {bucket}"), error)),
    }
}

#[async_trait]
impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        if events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let filter = self.stream_filter(stream)?;
        // Everything that does not depend on the stream's end, computed once.
        let parts = crate::chain::canonical_batch(stream, &events)?;
        let subjects = events
            .iter()
            .map(|event| self.subject_for(stream, &event.event_type, &event.metadata))
            .collect::<Result<Vec<_>, _>>()?;
        if events.len() > 1
            && events
                .iter()
                .map(|e| e.id)
                .collect::<HashSet<EventId>>()
                .len()
                != events.len()
        {
            return Err(StoreError::InvalidData(
                "a batch repeats an event id".into(),
            ));
        }
        // Ids older than the duplicate window may be a retry the server no longer recognizes.
        let window_start = std::time::SystemTime::now()
            .checked_sub(
                self.inner
                    .config
                    .duplicate_window
                    .saturating_sub(CLOCK_SKEW),
            )
            .unwrap_or(std::time::UNIX_EPOCH);
        let old = events.iter().any(|event| {
            event.id.0.get_timestamp().is_none_or(|ts| {
                let (secs, nanos) = ts.to_unix();
                std::time::UNIX_EPOCH + Duration::new(secs, nanos) < window_start
            })
        });
        if old {
            if let Some(result) = self.original_result(stream, &events).await? {
                return Ok(result);
            }
        }

        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let tail = match self.cached_tail(stream) {
                Some(tail) if !fresh => Some(tail),
                _ => {
                    fresh = true;
                    let tail = self.fetch_tail(stream).await?;
                    if let Some(tail) = &tail {
                        self.remember_tail(stream, tail.clone());
                    }
                    tail
                }
            };
            let actual = tail.as_ref().map(|t| t.version).filter(|v| *v > 0);
            if let Err(conflict) = expected.check(stream, actual) {
                if !fresh {
                    fresh = true;
                    continue;
                }
                return match self.original_result(stream, &events).await? {
                    Some(result) => Ok(result),
                    None => Err(conflict),
                };
            }
            let (mut version, last_seq, mut hash) =
                tail.as_ref().map_or((0, 0, ChainHash::GENESIS), |t| {
                    (t.version, t.last_seq, t.hash)
                });
            let first_version = version + 1;
            // Each message is built right before it is sent, so the server stores the first
            // ones of a batch while the rest are being encoded.
            let mut chain = (version, hash);
            let build = |index: usize| -> Result<(String, HeaderMap, Bytes), StoreError> {
                let (event, parts) = (&events[index], &parts[index]);
                chain.0 += 1;
                chain.1 = link_parts(&chain.1, &parts.prefix, chain.0);
                let body = wire::encode(EventParts {
                    id: &event.id,
                    stream,
                    version: chain.0,
                    event_type: &event.event_type,
                    schema: event.schema,
                    canonical_data: &parts.data,
                    metadata: &event.metadata,
                    hash: &chain.1,
                })?;
                let mut headers = HeaderMap::new();
                let id = event.id.to_string();
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert(wire::HEADER_EVENT_ID, id.as_str());
                headers.insert(wire::HEADER_EVENT_TYPE, event.event_type.as_str());
                headers.insert(wire::HEADER_EVENT_SCHEMA, event.schema.to_string().as_str());
                headers.insert("Content-Type", wire::CONTENT_TYPE);
                if index == 0 {
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last_seq.to_string().as_str(),
                    );
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence-Subject",
                        filter.as_str(),
                    );
                }
                Ok((subjects[index].clone(), headers, Bytes::from(body)))
            };
            let outcome = self.publish(events.len(), build).await;
            (version, hash) = chain;
            match outcome {
                Ok(Published::Stored { last_seq }) => {
                    let count = events.len() as u64;
                    let first_position = last_seq + 1 - count;
                    self.remember_tail(
                        stream,
                        Tail {
                            version,
                            last_seq,
                            hash,
                        },
                    );
                    for (offset, v) in (first_version..=version).enumerate() {
                        self.remember_mark(stream, v, first_position + offset as u64);
                    }
                    return Ok(AppendResult {
                        first_version,
                        last_version: version,
                        first_position,
                        last_position: last_seq,
                    });
                }
                Ok(Published::Duplicate { seq }) => {
                    // A single event the server already has: answer with the stored one.
                    let stored = self.event_at(seq).await?.ok_or_else(|| {
                        StoreError::Storage(format!("duplicate of sequence {seq}, not readable"))
                    })?;
                    if stored.stream != *stream || stored.id != events[0].id {
                        return Err(StoreError::IdempotencyMismatch { id: events[0].id });
                    }
                    return Ok(AppendResult {
                        first_version: stored.version,
                        last_version: stored.version,
                        first_position: seq,
                        last_position: seq,
                    });
                }
                Ok(Published::BatchHasStoredIds) => {
                    return match self.original_result(stream, &events).await? {
                        Some(result) => Ok(result),
                        None => Err(StoreError::Storage(
                            "JetStream called the batch a duplicate, but none of its ids is stored"
                                .into(),
                        )),
                    };
                }
                Ok(Published::WrongLastSequence) => {
                    // Someone else appended: look again. `Any` simply retries; an exact
                    // expectation is checked against the fresh end above.
                    self.forget_tail(stream);
                    fresh = false;
                    if matches!(expected, ExpectedVersion::Any) {
                        continue;
                    }
                    let tail = self.fetch_tail(stream).await?;
                    if let Some(tail) = &tail {
                        self.remember_tail(stream, tail.clone());
                    }
                    fresh = true;
                    let actual = tail.as_ref().map(|t| t.version).filter(|v| *v > 0);
                    if let Err(conflict) = expected.check(stream, actual) {
                        return match self.original_result(stream, &events).await? {
                            Some(result) => Ok(result),
                            None => Err(conflict),
                        };
                    }
                }
                Err(error) => {
                    self.forget_tail(stream);
                    return Err(error);
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "{stream} kept moving: no append after {MAX_ATTEMPTS} attempts"
        )))
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        const PAGE: usize = 1024;
        let filter = self.stream_filter(stream)?;
        let from_version = from_version.max(1);
        let mut seq = self.start_for(stream, from_version);
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.direct_batch(Some(seq), None, &filter, PAGE).await?;
            let len = page.len();
            for (at, event) in page {
                seq = at + 1;
                match event {
                    Ok(event) if event.stream == *stream => {
                        self.remember_mark(stream, event.version, at);
                        if event.version >= from_version && out.len() < limit {
                            out.push(event);
                        }
                    }
                    Ok(event) => tracing::warn!(
                        %stream, position = at, other = %event.stream,
                        "skipping an event of another stream on this stream's subject"
                    ),
                    Err(error) => {
                        tracing::warn!(%stream, %error, "skipping an undecodable message")
                    }
                }
            }
            if len < PAGE {
                break;
            }
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        const PAGE: usize = 1024;
        let filter = self.inner.config.events_subjects();
        let mut seq = from_position.max(1);
        let mut out = Vec::new();
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let page = self.direct_batch(Some(seq), None, &filter, want).await?;
            let len = page.len();
            for (at, event) in page {
                seq = at + 1;
                match event {
                    Ok(event) => out.push(event),
                    Err(error) => tracing::warn!(%error, "skipping an undecodable message"),
                }
            }
            if len < want {
                break;
            }
        }
        Ok(out)
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

/// A subscription on an ordered consumer: history, then live. When the consumer fails (the
/// server restarted, the connection dropped), a new one starts right after the last event
/// delivered, so the caller sees no gap and no duplicate.
fn subscription(store: JetStreamEventStore, from: u64) -> EventStream {
    struct State {
        store: JetStreamEventStore,
        next: u64,
        messages: Option<jetstream::consumer::pull::Ordered>,
        backoff: Duration,
    }
    let state = State {
        store,
        next: from,
        messages: None,
        backoff: Duration::from_millis(50),
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        loop {
            let Some(messages) = state.messages.as_mut() else {
                match open_consumer(&state.store, state.next).await {
                    Ok(messages) => {
                        state.messages = Some(messages);
                        state.backoff = Duration::from_millis(50);
                    }
                    Err(error) => {
                        tracing::warn!(%error, from = state.next, "cannot follow the log yet; retrying");
                        tokio::time::sleep(state.backoff).await;
                        state.backoff = (state.backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    let seq = match message.info() {
                        Ok(info) => info.stream_sequence,
                        Err(error) => {
                            tracing::warn!(%error, "a log message without JetStream metadata");
                            continue;
                        }
                    };
                    if seq < state.next {
                        continue;
                    }
                    state.next = seq + 1;
                    match wire::decode(&message.payload, seq) {
                        Ok(event) => return Some((Ok(event), state)),
                        Err(error) => {
                            tracing::warn!(%error, subject = %message.subject, "skipping an undecodable message");
                        }
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, from = state.next, "the log's consumer failed; resuming");
                    state.messages = None;
                }
                None => {
                    tracing::warn!(from = state.next, "the log's consumer ended; resuming");
                    state.messages = None;
                }
            }
        }
    }))
}

async fn open_consumer(
    store: &JetStreamEventStore,
    from: u64,
) -> Result<jetstream::consumer::pull::Ordered, StoreError> {
    let stream = store
        .inner
        .js
        .get_stream_no_info(&store.inner.stream)
        .await
        .map_err(|error| unavailable("opening the log", error))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: store.inner.config.events_subjects(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|error| unavailable("creating a consumer", error))?;
    consumer
        .messages()
        .await
        .map_err(|error| unavailable("consuming the log", error))
}
