use std::pin::Pin;

use domain::{DomainEvent, EventId, Metadata, StreamName};
use futures::Stream;
use serde::{Deserialize, Serialize};

pub(crate) use crate::error::ExpectedVersion;
use crate::error::StoreError;
use crate::hash::ChainHash;

/// An event to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    pub schema: u32,
    pub data: serde_json::Value,
    pub metadata: Metadata,
}

impl NewEvent {
    /// A new event with a fresh id from a domain event.
    pub fn from_domain<E: DomainEvent>(event: &E, metadata: Metadata) -> Self {
        Self {
            id: EventId::new(),
            event_type: event.event_type().to_owned(),
            schema: event.schema(),
            data: event.to_data(),
            metadata,
        }
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub id: EventId,
    pub stream: StreamName,
    pub version: u64,
    pub position: u64,
    pub event_type: String,
    pub schema: u32,
    /// The data as canonical JSON text (RFC 8785). Kept as text so that reading the log does
    /// not pay for parsing data the reader may not need; see [`RecordedEvent::data`].
    pub data_json: String,
    pub metadata: Metadata,
    pub hash: ChainHash,
}

impl RecordedEvent {
    /// The data as a JSON value.
    pub fn data(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.data_json).map_err(|error| StoreError::Corrupt {
            position: self.position,
            reason: format!("data is not JSON: {error}"),
        })
    }

    /// Decodes into a domain event, upcasting older schemas. `Ok(None)` for a type the
    /// aggregate does not know.
    pub fn decode<E: DomainEvent>(&self) -> Result<Option<E>, domain::EventDecodeError> {
        let data = serde_json::from_str(&self.data_json).map_err(|error| {
            domain::EventDecodeError::Malformed {
                event_type: self.event_type.clone(),
                schema: self.schema,
                reason: error.to_string(),
            }
        })?;
        E::decode(&self.event_type, self.schema, data)
    }
}

/// The result of an append: where the batch landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    pub first_version: u64,
    /// The stream's version after the append: the `Exact` to expect next.
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// An aggregate's state as of `version`, serialized as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// The aggregate's `SNAPSHOT_SCHEMA` when it was written; another one is ignored.
    pub schema: u32,
    /// The chain hash of the event at `version`, checked on load so that a snapshot never
    /// outlives a history it no longer matches.
    pub hash: ChainHash,
    pub state: Vec<u8>,
}

impl Snapshot {
    /// The stored form (postcard), the same on every backend.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        postcard::to_stdvec(self).map_err(|error| StoreError::storage_from("encoding", error))
    }

    /// A stored snapshot back. One that does not decode is as good as none: it is rebuilt
    /// from the log.
    pub fn decode(stream: &StreamName, bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes)
            .map_err(|error| tracing::warn!(%stream, %error, "ignoring an unreadable snapshot"))
            .ok()
    }
}

/// A subscription: events in position order, history then live.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>;
