//! The metadata carried by every event.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{UserId, WorkspaceId};
use crate::principal::Actor;
use crate::timestamp::Timestamp;

/// Who did what, when, and in answer to what. Part of the event's hashed bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub workspace: WorkspaceId,
    /// The owner of a personal integration; `None` for workspace integrations and policy.
    /// Distributed subscribers filter on it, so personal events can be kept from others.
    pub owner: Option<UserId>,
    pub actor: Actor,
    /// Shared by every event that one request or one sync run caused.
    pub correlation_id: Uuid,
    /// The event or request that directly caused this one.
    pub causation_id: Option<Uuid>,
    pub occurred_at: Timestamp,
}
