//! The events of an integration's life, and their payloads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{event_enum, EventDecodeError};
use crate::ids::{ActionId, CredentialRef, IntegrationId, RuleId, SyncId, UserId, WorkspaceId};
use crate::timestamp::Timestamp;

/// Whose integration this is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    Workspace,
    Personal { owner: UserId },
}

impl Scope {
    pub fn owner(&self) -> Option<&UserId> {
        match self {
            Scope::Workspace => None,
            Scope::Personal { owner } => Some(owner),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationConnected {
    pub integration: IntegrationId,
    pub workspace: WorkspaceId,
    pub app: String,
    pub scope: Scope,
    /// Setup fields that are not secret (instance URL, subdomain, region …).
    pub setup: BTreeMap<String, String>,
    pub granted_scopes: Vec<String>,
    /// How the provider names the connected account, e.g. `sales@acme.com`.
    pub account_label: Option<String>,
    pub credential_ref: CredentialRef,
    pub token_expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionTested {
    pub ok: bool,
    pub latency_ms: u64,
    /// The provider's answer, in words.
    pub answer: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsRefreshed {
    pub credential_ref: CredentialRef,
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryReason {
    Expired,
    Revoked,
    InvalidGrant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsExpired {
    pub reason: ExpiryReason,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reauthenticated {
    pub credential_ref: CredentialRef,
    pub granted_scopes: Vec<String>,
    pub expires_at: Option<Timestamp>,
}

/// What a sync run reads: everything (`full`, which also finds deletions), or what changed
/// since the last run (`incremental`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    Full,
    Incremental,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum SyncTrigger {
    Manual { user: UserId },
    Schedule,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequested {
    pub sync_id: SyncId,
    pub kind: SyncKind,
    pub trigger: SyncTrigger,
    /// Asked while a worker held the pending run (its lease): the run may already have read
    /// past what prompted this request, so it is queued to follow that run instead of joining
    /// it. Absent (false) in events written before follow-ups existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_up: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStarted {
    pub sync_id: SyncId,
    /// The provider cursor the run starts from; `None` for a full sync from the beginning.
    pub cursor: Option<String>,
}

/// Records counted by a page or a whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    pub pulled: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl RecordCounts {
    pub fn add(&mut self, other: &RecordCounts) {
        self.pulled += other.pulled;
        self.created += other.created;
        self.updated += other.updated;
        self.deleted += other.deleted;
    }

    /// Whether any record was created, updated or deleted.
    pub fn changed(&self) -> bool {
        self.created + self.updated + self.deleted > 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgressed {
    pub sync_id: SyncId,
    pub object: String,
    pub page: u32,
    pub counts: RecordCounts,
    /// Where the next page starts; a run resumed after a crash starts here.
    pub cursor: Option<String>,
}

/// Where a run's detail ended: the head of its stream `run-<sync_id>` in the run-detail log
/// (its `SyncStarted` and `SyncProgressed`), which the run's outcome commits to. The detail
/// ages out after the retention; the head stays in the integration's chain, so while the
/// detail lasts it cannot be altered unnoticed, and once gone it is known to have existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetailHead {
    /// The version of the detail stream's last event: how many events it holds.
    pub version: u64,
    /// That event's chain hash, hex.
    pub hash: String,
    /// When the run started (its `SyncStarted`), for the sync logs once the detail is gone.
    pub started_at: Timestamp,
    /// How many pages it recorded.
    pub pages: u32,
}

/// Schema 2 adds `detail`; schema 1 (runs that recorded their progress in the integration's
/// stream) reads as `detail: None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCompleted {
    pub sync_id: SyncId,
    pub totals: RecordCounts,
    pub duration_ms: u64,
    /// The head of the run's detail; `None` when it recorded none (it found nothing, or it
    /// recorded its progress in the integration's stream, as runs before schema 2 did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<RunDetailHead>,
}

/// Schema 2 adds `detail`, as for [`SyncCompleted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFailed {
    pub sync_id: SyncId,
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub totals: RecordCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<RunDetailHead>,
}

/// A value transformation applied while mapping a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Trim,
    Lowercase,
    Uppercase,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldMapping {
    pub provider_field: String,
    pub harmony_field: String,
    #[serde(default)]
    pub transform: Option<Transform>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingChanged {
    pub object: String,
    /// Counts every mapping change of this integration, across objects.
    pub version: u32,
    pub fields: Vec<FieldMapping>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncScheduleChanged {
    /// Incremental sync every this many minutes; `None` turns scheduled syncs off.
    pub every_minutes: Option<u32>,
}

/// Personal data an event carries sealed: encrypted (XChaCha20-Poly1305) under the
/// integration's data key in the vault. Deleting the integration destroys the key, so the
/// history keeps only that there was something, and how large; the chain still verifies,
/// since the ciphertext itself stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// base64 of the nonce, then the ciphertext and its tag.
    pub ciphertext: String,
    /// The length of the sealed JSON, in bytes.
    pub bytes: u64,
}

/// The arguments or the result of a Companion action as an event holds them: sealed (schema 2
/// of `ActionRequested` and `ActionCompleted`), or in the clear as schema 1 stored them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ActionPayload {
    Sealed(SealedPayload),
    Plain(Value),
}

/// The JSON shape of a sealed payload: `{"sealed": {"ciphertext": …, "bytes": …}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedPayload {
    pub sealed: Sealed,
}

impl ActionPayload {
    /// A payload sealed as `sealed`.
    pub fn sealed(sealed: Sealed) -> Self {
        Self::Sealed(SealedPayload { sealed })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequested {
    pub action_id: ActionId,
    pub tool: String,
    /// The tool's arguments as Companion gave them (never secrets), sealed: they are personal
    /// data (a contact searched for, a message's text).
    pub arguments: ActionPayload,
    pub sensitive: bool,
    pub requested_by: UserId,
}

/// Who let an action through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Approver {
    User {
        user: UserId,
    },
    Rule {
        rule_id: RuleId,
    },
    /// The tool is not sensitive, so no confirmation is asked.
    NotSensitive,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionApproved {
    pub action_id: ActionId,
    pub by: Approver,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRejected {
    pub action_id: ActionId,
    pub by: UserId,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCompleted {
    pub action_id: ActionId,
    /// The provider's answer, sealed: it is personal data (contacts found, a message sent).
    pub result: ActionPayload,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionFailed {
    pub action_id: ActionId,
    pub error: String,
    pub retryable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub reason: String,
    /// Whether the provider confirmed revoking the token.
    pub token_revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Whether the integration's data key was destroyed, making its secrets unrecoverable.
    pub secrets_shredded: bool,
}

/// Written by a later connect onto the stream of a connect that reserved the app's slot and
/// never finished (its process died). It makes that connect's own first append fail, so the
/// two can never both succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionAbandoned {
    pub workspace: WorkspaceId,
    pub owner: Option<UserId>,
    pub app: String,
    pub reason: String,
}

event_enum!(
    /// Every event of an integration stream.
    IntegrationEvent, kind = IntegrationEventKind, upcast = upcast, {
        IntegrationConnected(IntegrationConnected) = 2,
        ConnectionTested(ConnectionTested) = 2,
        CredentialsRefreshed(CredentialsRefreshed) = 1,
        CredentialsExpired(CredentialsExpired) = 1,
        Reauthenticated(Reauthenticated) = 1,
        SyncRequested(SyncRequested) = 1,
        SyncStarted(SyncStarted) = 1,
        SyncProgressed(SyncProgressed) = 1,
        SyncCompleted(SyncCompleted) = 2,
        SyncFailed(SyncFailed) = 2,
        MappingChanged(MappingChanged) = 1,
        SyncScheduleChanged(SyncScheduleChanged) = 1,
        ActionRequested(ActionRequested) = 2,
        ActionApproved(ActionApproved) = 1,
        ActionRejected(ActionRejected) = 1,
        ActionCompleted(ActionCompleted) = 2,
        ActionFailed(ActionFailed) = 1,
        Disconnected(Disconnected) = 1,
        Deleted(Deleted) = 1,
        ConnectionAbandoned(ConnectionAbandoned) = 1,
    }
);

fn malformed(event_type: &str, schema: u32, reason: &str) -> EventDecodeError {
    EventDecodeError::Malformed {
        event_type: event_type.to_owned(),
        schema,
        reason: reason.to_owned(),
    }
}

/// The upcasters of integration events.
///
/// - `IntegrationConnected` 1 → 2: schema 1 stored the granted scopes as one space-separated
///   `scopes` string (as OAuth2 token responses do); schema 2 stores a `granted_scopes` list.
/// - `ConnectionTested` 1 → 2: schema 1 stored `success`, `latency_secs` (a float) and `message`;
///   schema 2 stores `ok`, whole `latency_ms` and `answer`.
/// - `ActionRequested` and `ActionCompleted` 1 → 2: schema 1 stored the arguments and the
///   result in the clear; schema 2 seals them. The old clear values stay as they were
///   ([`ActionPayload::Plain`]): the log is never rewritten.
/// - `SyncCompleted` and `SyncFailed` 1 → 2: schema 2 adds the optional `detail` (the head of
///   the run's detail stream); a schema 1 run kept its progress in the integration's stream.
fn upcast(event_type: &str, schema: u32, mut data: Value) -> Result<Value, EventDecodeError> {
    let object = data
        .as_object_mut()
        .ok_or_else(|| malformed(event_type, schema, "data is not a JSON object"))?;
    match (event_type, schema) {
        ("IntegrationConnected", 1) => {
            let scopes = object.remove("scopes").unwrap_or(Value::Null);
            let list: Vec<Value> = match scopes {
                Value::String(text) => text
                    .split_whitespace()
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
                Value::Null => Vec::new(),
                _ => return Err(malformed(event_type, schema, "`scopes` is not a string")),
            };
            object.insert("granted_scopes".into(), Value::Array(list));
            Ok(data)
        }
        ("ConnectionTested", 1) => {
            let ok = object.remove("success").unwrap_or(Value::Bool(false));
            let secs = object
                .remove("latency_secs")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            let message = object
                .remove("message")
                .unwrap_or(Value::String(String::new()));
            object.insert("ok".into(), ok);
            // Rounded to whole milliseconds; negative or absurd values are clamped to zero.
            let millis = (secs * 1000.0).round();
            let millis = if millis.is_finite() && millis >= 0.0 {
                millis as u64
            } else {
                0
            };
            object.insert("latency_ms".into(), Value::from(millis));
            object.insert("answer".into(), message);
            Ok(data)
        }
        ("ActionRequested", 1)
        | ("ActionCompleted", 1)
        | ("SyncCompleted", 1)
        | ("SyncFailed", 1) => Ok(data),
        _ => Err(EventDecodeError::NoUpcaster {
            event_type: event_type.to_owned(),
            schema,
        }),
    }
}
