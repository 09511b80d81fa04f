use domain::{EventId, StreamName};

use crate::types::ExpectedVersion;

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
