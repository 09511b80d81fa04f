use std::fmt;

use domain::{EventId, StreamName};
use serde::{Deserialize, Serialize};

/// What can go wrong in the log. `Conflict` is the caller's to resolve (reload and retry);
/// `Unavailable` and `Storage` are infrastructure failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} is at version {actual}, the append expected {expected}", actual = match .actual { Some(v) => v.to_string(), None => "none (no stream)".to_owned() })]
    Conflict {
        stream: StreamName,
        expected: ExpectedVersion,
        actual: Option<u64>,
    },
    #[error("event {id} is already stored in another batch; a retried batch must be identical")]
    IdempotencyMismatch { id: EventId },
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("event data must be a JSON object or value that canonicalizes: {0}")]
    InvalidData(String),
    #[error("the event log is misconfigured: {0}")]
    Misconfigured(String),
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("stored record at position {position} is corrupt: {reason}")]
    Corrupt { position: u64, reason: String },
}

impl StoreError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Conflict { .. }
        )
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Storage(error.to_string())
    }
}

/// The optimistic-concurrency check of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// `NoStream` for 0, `Exact(v)` otherwise.
    pub fn from_version(version: u64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }

    pub(crate) fn check(self, stream: &StreamName, actual: Option<u64>) -> Result<(), StoreError> {
        let ok = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exact(version) => actual == Some(version),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                stream: stream.clone(),
                expected: self,
                actual,
            })
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}
