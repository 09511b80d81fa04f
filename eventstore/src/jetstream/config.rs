//! [`JetStreamConfig`]: where the server is and how the log's streams are set up.

use super::*;

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
    /// How long sync-run detail stays on the runs stream (its `max_age`).
    pub run_detail_max_age: Duration,
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
            run_detail_max_age: Duration::from_secs(90 * 24 * 3600),
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

    /// The run-detail stream's name, e.g. `HARMONY_RUNS`.
    pub fn runs_stream(&self) -> String {
        format!("{}_RUNS", self.namespace.to_ascii_uppercase())
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
    pub(super) fn events_stream_config(&self) -> stream::Config {
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
