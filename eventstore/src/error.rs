use std::fmt;

use domain::{EventId, StreamName};
use serde::{Deserialize, Serialize};

/// What can go wrong in the log. `Conflict` is the caller's to resolve (reload and retry);
/// `Unavailable` and `Storage` are infrastructure failures, and keep the error underneath as
/// their source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    Conflict {
        stream: StreamName,
        expected: ExpectedVersion,
        actual: Option<u64>,
    },
    IdempotencyMismatch {
        id: EventId,
    },
    EmptyAppend,
    InvalidData(String),
    Misconfigured(String),
    /// Away for a while (a server restarting, between leaders, a writer stopping): the same
    /// call may succeed later.
    Unavailable {
        what: String,
        source: Option<Source>,
    },
    /// A failure of the storage underneath that passing time does not mend.
    Storage {
        what: String,
        source: Option<Source>,
    },
    Corrupt {
        position: u64,
        reason: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => {
                write!(f, "stream {stream} is at version ")?;
                match actual {
                    Some(version) => write!(f, "{version}")?,
                    None => f.write_str("none (no stream)")?,
                }
                write!(f, ", the append expected {expected}")
            }
            StoreError::IdempotencyMismatch { id } => write!(
                f,
                "event {id} is already stored in another batch; a retried batch must be identical"
            ),
            StoreError::EmptyAppend => f.write_str("an append needs at least one event"),
            StoreError::InvalidData(reason) => write!(
                f,
                "event data must be a JSON object or value that canonicalizes: {reason}"
            ),
            StoreError::Misconfigured(reason) => {
                write!(f, "the event log is misconfigured: {reason}")
            }
            StoreError::Unavailable { what, source } => {
                write!(f, "the event log is unavailable: {what}")?;
                source.iter().try_for_each(|source| write!(f, ": {source}"))
            }
            StoreError::Storage { what, source } => {
                write!(f, "storage failure: {what}")?;
                source.iter().try_for_each(|source| write!(f, ": {source}"))
            }
            StoreError::Corrupt { position, reason } => {
                write!(
                    f,
                    "stored record at position {position} is corrupt: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for StoreError {
    /// The error underneath an infrastructure failure itself (not a wrapper), so that whoever
    /// walks the chain finds its type: a database outage behind an unavailable log, say.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unavailable {
                source: Some(source),
                ..
            }
            | StoreError::Storage {
                source: Some(source),
                ..
            } => Some(source.get()),
            _ => None,
        }
    }
}

impl StoreError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Conflict { .. }
        )
    }

    /// The log is away for a while; `what` says how.
    pub fn unavailable(what: impl Into<String>) -> Self {
        StoreError::Unavailable {
            what: what.into(),
            source: None,
        }
    }

    /// The log is away for a while while doing `what`, because of `source`.
    pub fn unavailable_from(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Unavailable {
            what: what.into(),
            source: Some(Source::new(source)),
        }
    }

    /// The storage failed; `what` says how.
    pub fn storage(what: impl Into<String>) -> Self {
        StoreError::Storage {
            what: what.into(),
            source: None,
        }
    }

    /// The storage failed while doing `what`, because of `source`.
    pub fn storage_from(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Storage {
            what: what.into(),
            source: Some(Source::new(source)),
        }
    }
}

/// The error underneath an infrastructure failure, kept whole (its type and its own causes)
/// and cheap to clone. Two are equal when they say the same.
#[derive(Clone)]
pub struct Source(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Source {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(error))
    }

    /// An error already boxed, as NATS hands some over.
    pub fn boxed(error: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self(std::sync::Arc::from(error))
    }

    /// The error itself, to look at its type.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Source {}

/// Whether `error`, or anything that caused it, is the event log away for a while (a server
/// restarting, between leaders) rather than a fault.
pub fn caused_by_outage(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if matches!(
            error.downcast_ref::<StoreError>(),
            Some(StoreError::Unavailable { .. })
        ) {
            return true;
        }
        next = error.source();
    }
    false
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::storage_from("sled", error)
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
