//! What auditors read of the log, the same through the API, the event stream and the CLI: one
//! event ([`EventView`]) and an integration's state as of a moment ([`StateView`]).

use domain::principal::Actor;
use domain::{Integration, IntegrationId, Timestamp};
use eventstore::RecordedEvent;
use projections::installed::InstalledRow;
use serde::Serialize;
use serde_json::Value;

/// One event as auditors read it: what happened, to which stream, who did it and when, and
/// its link in the hash chain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventView {
    /// The event's id (a UUID v7).
    pub id: String,
    /// `integration-<id>` or `workspace-<id>`.
    pub stream: String,
    /// Its place in its stream, from 1.
    pub version: u64,
    /// Its place in the whole log, from 1.
    pub position: u64,
    /// `IntegrationConnected`, `SyncCompleted`, ….
    #[serde(rename = "type")]
    pub event_type: String,
    /// The version of the event's data format.
    pub schema: u32,
    /// RFC 3339.
    pub occurred_at: String,
    pub actor: Actor,
    pub workspace: String,
    /// The user a personal integration belongs to.
    pub owner: Option<String>,
    /// Shared by the events of one request.
    pub correlation_id: String,
    /// The event that caused this one, if any.
    pub causation_id: Option<String>,
    /// The event's own fields (secrets never among them; sealed personal data shows as
    /// `{"sealed": …}`, or `{"shredded": true}` once its integration was deleted).
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub data: Value,
    /// The chain hash (hex SHA-256) over this event and the previous one's hash.
    pub hash: String,
}

impl From<&RecordedEvent> for EventView {
    fn from(event: &RecordedEvent) -> Self {
        Self {
            id: event.id.to_string(),
            stream: event.stream.as_str().to_owned(),
            version: event.version,
            position: event.position,
            event_type: event.event_type.clone(),
            schema: event.schema,
            occurred_at: event.metadata.occurred_at.to_string(),
            actor: event.metadata.actor.clone(),
            workspace: event.metadata.workspace.as_str().to_owned(),
            owner: event.metadata.owner.as_ref().map(|o| o.as_str().to_owned()),
            correlation_id: event.metadata.correlation_id.to_string(),
            causation_id: event.metadata.causation_id.map(|c| c.to_string()),
            data: event.data().unwrap_or(Value::Null),
            hash: event.hash.to_hex(),
        }
    }
}

/// An integration's state as of a moment, folded from its history alone.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StateView {
    pub integration_id: String,
    /// RFC 3339: every event at or before it counts.
    pub as_of: String,
    /// The version of the last event that counted.
    pub version: u64,
    /// That event's chain hash.
    pub hash: String,
    /// The row Installed showed then; `null` when it had none (not yet connected, or
    /// deleted).
    pub installed: Option<InstalledRow>,
    /// The whole folded state.
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub state: Integration,
}

impl StateView {
    pub(crate) fn new(
        id: IntegrationId,
        as_of: Timestamp,
        loaded: command::repository::Loaded<Integration>,
    ) -> Self {
        Self {
            integration_id: id.to_string(),
            as_of: as_of.to_string(),
            version: loaded.version,
            hash: loaded.hash.to_hex(),
            installed: projections::installed::row_of(&loaded.state),
            state: loaded.state,
        }
    }
}
