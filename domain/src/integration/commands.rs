//! What can be asked of an integration. Imperative names; each yields the events in
//! `events.rs` or a [`crate::DomainError`].

use std::collections::BTreeMap;

use super::events::{ExpiryReason, FieldMapping, SyncKind};
use crate::catalog::AppScope;
use crate::ids::{ActionId, CredentialRef, IntegrationId, RuleId, SyncId, UserId, WorkspaceId};
use crate::timestamp::Timestamp;

/// Connect an app. The caller has already stored any secrets in the vault and passes only the
/// reference; `setup` holds the non-secret setup fields.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectIntegration {
    pub integration: IntegrationId,
    pub app: String,
    /// The scope the user chose to connect with; it must be the app's own.
    pub scope: AppScope,
    pub setup: BTreeMap<String, String>,
    pub granted_scopes: Vec<String>,
    pub account_label: Option<String>,
    pub credential_ref: CredentialRef,
    pub token_expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IntegrationCommand {
    Connect(ConnectIntegration),
    /// Record the outcome of a connection test the adapter just made.
    RecordConnectionTest {
        ok: bool,
        latency_ms: u64,
        answer: String,
    },
    /// Record a token refresh (system only).
    RecordCredentialsRefresh {
        credential_ref: CredentialRef,
        expires_at: Option<Timestamp>,
    },
    /// The provider refused the credentials (system only): the integration needs reauth.
    MarkCredentialsExpired {
        reason: ExpiryReason,
        detail: String,
    },
    Reauthenticate {
        credential_ref: CredentialRef,
        granted_scopes: Vec<String>,
        expires_at: Option<Timestamp>,
    },
    /// A user asks for a sync (manual trigger) or the scheduler does (system caller).
    /// `claimed`: a worker held the integration's run (its lease) when the request was made,
    /// so a pending run may already be reading the provider and the request queues a
    /// follow-up instead of joining it.
    RequestSync {
        sync_id: SyncId,
        kind: SyncKind,
        claimed: bool,
    },
    /// A run's start and pages recorded in the integration's own stream: the form runs had
    /// before the run-detail log, which logs written then still hold and the aggregate still
    /// folds. The sync worker records them in the run's detail instead (ADR 009).
    StartSync {
        sync_id: SyncId,
        cursor: Option<String>,
    },
    RecordSyncProgress {
        sync_id: SyncId,
        object: String,
        page: u32,
        counts: super::events::RecordCounts,
        cursor: Option<String>,
    },
    /// The run ended. `unrecorded` counts what the integration's stream does not hold: the
    /// pages recorded in the run's detail and those whose progress was not recorded at all
    /// (they changed nothing): the totals add them. `detail` is the head of the run's detail
    /// stream, which the outcome commits to.
    CompleteSync {
        sync_id: SyncId,
        duration_ms: u64,
        unrecorded: super::events::RecordCounts,
        detail: Option<super::events::RunDetailHead>,
    },
    FailSync {
        sync_id: SyncId,
        code: String,
        message: String,
        retryable: bool,
        unrecorded: super::events::RecordCounts,
        detail: Option<super::events::RunDetailHead>,
    },
    /// Replace an object's field mapping. `discovered_fields` are the provider's fields as the
    /// adapter just listed them (custom fields included); without them the app's standard
    /// fields are the reference.
    ChangeMapping {
        object: String,
        fields: Vec<FieldMapping>,
        discovered_fields: Option<Vec<String>>,
        /// The mapping version the caller last read, if it wants the change refused when
        /// somebody changed the mappings since.
        expected_version: Option<u32>,
    },
    /// Incremental sync every so many minutes, or `None` for off.
    ChangeSyncSchedule {
        every_minutes: Option<u32>,
    },
    /// Companion asks to use a tool. `auto_approval` names the workspace-policy rule that
    /// matched, if any (the policy lives on its own stream, so the caller looks it up).
    RequestAction {
        action_id: ActionId,
        tool: String,
        /// Sealed by the service before the command (see [`super::Sealed`]); a plain value
        /// must be a JSON object.
        arguments: super::ActionPayload,
        auto_approval: Option<RuleId>,
    },
    ApproveAction {
        action_id: ActionId,
        reason: Option<String>,
    },
    RejectAction {
        action_id: ActionId,
        reason: Option<String>,
    },
    CompleteAction {
        action_id: ActionId,
        result: super::ActionPayload,
    },
    FailAction {
        action_id: ActionId,
        error: String,
        retryable: bool,
    },
    Disconnect {
        reason: String,
        token_revoked: bool,
    },
    Delete {
        secrets_shredded: bool,
    },
    /// Close the stream of a connect that reserved a slot and never finished (system only).
    Abandon {
        workspace: WorkspaceId,
        owner: Option<UserId>,
        app: String,
        reason: String,
    },
}
