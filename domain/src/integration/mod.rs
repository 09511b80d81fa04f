//! The `Integration` aggregate: one connection of one app, from connect to delete.
//!
//! The state is folded from the integration's own stream. `handle` enforces every rule of
//! DESIGN.md that concerns a single integration: who may act, which actions each status allows,
//! what the app supports, and what disconnect and delete leave behind. The one rule that spans
//! integrations — one active connection per app per scope owner — lives in
//! [`crate::policy::WorkspacePolicy`].

mod commands;
mod events;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use commands::{ConnectIntegration, IntegrationCommand};
pub use events::*;

use crate::aggregate::{Aggregate, CommandContext};
use crate::catalog::{self, App, AppScope};
use crate::error::DomainError;
use crate::ids::{ActionId, CredentialRef, IntegrationId, SyncId, WorkspaceId};
use crate::metadata::Metadata;
use crate::principal::{Actor, Caller};
use crate::timestamp::Timestamp;

/// Where an integration is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Nothing has happened on this stream.
    #[default]
    New,
    Connected,
    /// The provider expired or revoked the credentials; only reauth, disconnect and delete work.
    NeedsReauth,
    /// Syncs stopped, secrets and setup gone; kept in Installed with its sync logs.
    Disconnected,
    /// Gone from Installed; its history stays for auditors.
    Deleted,
    /// A connect that never finished and was closed by a later one.
    Abandoned,
}

/// Fixed at connect time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: IntegrationId,
    pub workspace: WorkspaceId,
    pub app: String,
    pub scope: Scope,
    pub connected_by: Actor,
    pub connected_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSync {
    pub sync_id: SyncId,
    pub kind: SyncKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningSync {
    pub sync_id: SyncId,
    pub kind: SyncKind,
    pub started_at: Timestamp,
    /// The cursor after the last recorded page: where a resumed run continues.
    pub cursor: Option<String>,
    pub pages: u32,
    pub totals: RecordCounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SyncOutcome {
    Completed,
    Failed { code: String, retryable: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    pub sync_id: SyncId,
    pub outcome: SyncOutcome,
    pub finished_at: Timestamp,
    pub totals: RecordCounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastTest {
    pub ok: bool,
    pub at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    AwaitingApproval,
    Approved,
}

/// An action that is neither finished nor rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAction {
    pub tool: String,
    /// The tool's arguments, for the worker that performs it once approved (sealed).
    pub arguments: ActionPayload,
    pub sensitive: bool,
    pub status: ActionStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMapping {
    pub version: u32,
    pub fields: Vec<FieldMapping>,
}

/// The state of one integration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Integration {
    pub profile: Option<Profile>,
    pub status: Status,
    pub setup: BTreeMap<String, String>,
    pub granted_scopes: Vec<String>,
    pub account_label: Option<String>,
    pub credential_ref: Option<CredentialRef>,
    pub token_expires_at: Option<Timestamp>,
    pub pending_sync: Option<PendingSync>,
    pub running_sync: Option<RunningSync>,
    pub last_sync: Option<LastSync>,
    pub last_test: Option<LastTest>,
    pub mapping_version: u32,
    pub mappings: BTreeMap<String, ObjectMapping>,
    pub schedule_minutes: Option<u32>,
    pub open_actions: BTreeMap<ActionId, OpenAction>,
}

/// The bounds of the incremental-sync schedule, in minutes.
pub const SCHEDULE_MINUTES: std::ops::RangeInclusive<u32> = 5..=1440;

/// What a command needs from its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Connect, change or remove, approve actions: an admin or integration manager for
    /// workspace integrations, the owner for personal ones.
    Manage,
    /// Ask Companion to use a tool: any member who can see the integration.
    Use,
    /// Facts only the service itself reports (refreshes, sync progress, action outcomes).
    System,
}

impl Integration {
    fn profile(&self) -> Result<&Profile, DomainError> {
        self.profile.as_ref().ok_or(DomainError::NotFound)
    }

    fn app(&self) -> Result<&'static App, DomainError> {
        let profile = self.profile()?;
        catalog::app(&profile.app).ok_or_else(|| DomainError::UnknownApp(profile.app.clone()))
    }

    /// Whether this user can see the integration at all: workspace integrations are visible to
    /// the workspace, personal ones to their owner only.
    pub fn visible_to(&self, caller: &Caller) -> bool {
        let Some(profile) = &self.profile else {
            return false;
        };
        match caller {
            Caller::System { .. } => true,
            Caller::User(principal) => {
                principal.workspace == profile.workspace
                    && profile
                        .scope
                        .owner()
                        .is_none_or(|owner| *owner == principal.user)
            }
        }
    }

    /// Whether `caller` may connect, change or remove this integration: the rule every
    /// managing command enforces, for a page that shows or hides what it offers.
    pub fn manageable_by(&self, caller: &Caller) -> bool {
        self.authorize_caller(caller, Access::Manage).is_ok()
    }

    fn authorize(&self, context: &CommandContext, access: Access) -> Result<(), DomainError> {
        self.authorize_caller(&context.caller, access)
    }

    fn authorize_caller(&self, caller: &Caller, access: Access) -> Result<(), DomainError> {
        let profile = self.profile()?;
        let Caller::User(principal) = caller else {
            return Ok(());
        };
        if !self.visible_to(caller) {
            // Another user's personal integration is reported as absent, not forbidden, so its
            // existence does not leak.
            return Err(DomainError::NotFound);
        }
        if access == Access::System {
            return Err(DomainError::Forbidden(
                "only the service itself records this",
            ));
        }
        if !principal.role.can_write() {
            return Err(DomainError::Forbidden("auditors have read-only access"));
        }
        if access == Access::Manage
            && profile.scope == Scope::Workspace
            && !principal.role.manages_workspace_integrations()
        {
            return Err(DomainError::Forbidden(
                "only admins and members with the integration permission manage workspace integrations",
            ));
        }
        Ok(())
    }

    /// Connected and holding working credentials.
    fn ensure_active(&self) -> Result<(), DomainError> {
        match self.status {
            Status::Connected => Ok(()),
            Status::NeedsReauth => Err(DomainError::NeedsReauth),
            Status::Disconnected => Err(DomainError::Disconnected),
            Status::Deleted => Err(DomainError::Deleted),
            Status::New | Status::Abandoned => Err(DomainError::NotFound),
        }
    }

    /// Connected, with or without working credentials.
    fn ensure_not_ended(&self) -> Result<(), DomainError> {
        match self.status {
            Status::Connected | Status::NeedsReauth => Ok(()),
            _ => self.ensure_active(),
        }
    }

    /// The actions an admin can take now, in the order the detail page shows them.
    pub fn available_actions(&self) -> Vec<&'static str> {
        let Ok(app) = self.app() else {
            return Vec::new();
        };
        let caps = &app.capabilities;
        let mut actions = Vec::new();
        match self.status {
            Status::Connected => {
                if caps.test_connection {
                    actions.push("test");
                }
                if caps.reauth {
                    actions.push("reauth");
                }
                if caps.full_sync {
                    actions.push("sync");
                }
                if caps.incremental_sync {
                    actions.push("schedule");
                }
                if !caps.mappings.is_empty() {
                    actions.push("mappings");
                }
                actions.extend(["disconnect", "delete"]);
            }
            Status::NeedsReauth => {
                actions.push("reauth");
                if !caps.mappings.is_empty() {
                    actions.push("mappings");
                }
                actions.extend(["disconnect", "delete"]);
            }
            Status::Disconnected => actions.push("delete"),
            Status::New | Status::Deleted | Status::Abandoned => {}
        }
        actions
    }

    fn connect(
        &self,
        command: &ConnectIntegration,
        context: &CommandContext,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        let Caller::User(principal) = &context.caller else {
            return Err(DomainError::Forbidden(
                "an integration is connected by a user",
            ));
        };
        if self.status != Status::New {
            return Err(DomainError::AlreadyConnected);
        }
        let app = catalog::app(&command.app)
            .ok_or_else(|| DomainError::UnknownApp(command.app.clone()))?;
        if command.scope != app.scope {
            return Err(DomainError::ScopeMismatch {
                app: app.name.to_owned(),
                expected: app.scope.as_str(),
                requested: command.scope.as_str(),
            });
        }
        if !principal.role.can_write() {
            return Err(DomainError::Forbidden("auditors have read-only access"));
        }
        if app.scope == AppScope::Workspace && !principal.role.manages_workspace_integrations() {
            return Err(DomainError::Forbidden(
                "only admins and members with the integration permission connect workspace integrations",
            ));
        }
        for (name, value) in &command.setup {
            let invalid = |reason: String| DomainError::InvalidSetup {
                field: name.clone(),
                reason,
            };
            let field = app
                .setup_field(name)
                .ok_or_else(|| invalid(format!("{} has no such setup field", app.name)))?;
            if field.is_secret() {
                return Err(invalid(
                    "is a secret: it goes to the vault, never into the log".into(),
                ));
            }
            field.kind.validate(value).map_err(invalid)?;
        }
        if let Some(missing) = app.setup_fields.iter().find(|field| {
            field.required && !field.is_secret() && !command.setup.contains_key(field.name)
        }) {
            return Err(DomainError::InvalidSetup {
                field: missing.name.to_owned(),
                reason: "is required".into(),
            });
        }
        let scope = match app.scope {
            AppScope::Workspace => Scope::Workspace,
            AppScope::Personal => Scope::Personal {
                owner: principal.user.clone(),
            },
        };
        Ok(vec![IntegrationEvent::IntegrationConnected(
            IntegrationConnected {
                integration: command.integration,
                workspace: principal.workspace.clone(),
                app: app.id.to_owned(),
                scope,
                setup: command.setup.clone(),
                granted_scopes: command.granted_scopes.clone(),
                account_label: command.account_label.clone(),
                credential_ref: command.credential_ref.clone(),
                token_expires_at: command.token_expires_at,
            },
        )])
    }

    /// The events that stop everything in flight: the pending and running syncs fail with
    /// `code`, and open actions fail.
    fn stop_work(&self, code: &str, message: &str, retryable: bool) -> Vec<IntegrationEvent> {
        let mut events = Vec::new();
        if let Some(running) = &self.running_sync {
            events.push(IntegrationEvent::SyncFailed(SyncFailed {
                sync_id: running.sync_id,
                code: code.to_owned(),
                message: message.to_owned(),
                retryable,
                totals: running.totals,
            }));
        }
        if let Some(pending) = &self.pending_sync {
            events.push(IntegrationEvent::SyncFailed(SyncFailed {
                sync_id: pending.sync_id,
                code: code.to_owned(),
                message: message.to_owned(),
                retryable,
                totals: RecordCounts::default(),
            }));
        }
        events
    }

    fn disconnect_events(&self, reason: &str, token_revoked: bool) -> Vec<IntegrationEvent> {
        let mut events = self.stop_work("cancelled", "the integration was disconnected", false);
        for action_id in self.open_actions.keys() {
            events.push(IntegrationEvent::ActionFailed(ActionFailed {
                action_id: *action_id,
                error: "the integration was disconnected".into(),
                retryable: false,
            }));
        }
        events.push(IntegrationEvent::Disconnected(Disconnected {
            reason: reason.to_owned(),
            token_revoked,
        }));
        events
    }

    fn open_action(&self, action_id: ActionId) -> Result<&OpenAction, DomainError> {
        self.open_actions
            .get(&action_id)
            .ok_or(DomainError::UnknownAction(action_id))
    }

    fn change_mapping(
        &self,
        app: &App,
        object: &str,
        fields: &[FieldMapping],
        discovered_fields: Option<&[String]>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        if app.capabilities.mappings.is_empty() {
            return Err(DomainError::Unsupported {
                app: app.name.to_owned(),
                capability: "field mappings",
            });
        }
        let mappable = app
            .mappable_object(object)
            .ok_or_else(|| DomainError::UnknownObject {
                app: app.name.to_owned(),
                object: object.to_owned(),
            })?;
        if fields.is_empty() {
            return Err(DomainError::InvalidMapping {
                field: object.to_owned(),
                reason: "maps no field".into(),
            });
        }
        let provider_has = |field: &str| match discovered_fields {
            Some(discovered) => discovered.iter().any(|f| f == field),
            None => mappable.provider_fields.contains(&field),
        };
        let mut targets = BTreeSet::new();
        for pair in fields {
            if !provider_has(&pair.provider_field) {
                return Err(DomainError::InvalidMapping {
                    field: pair.provider_field.clone(),
                    reason: format!("{} has no such field on {object}", app.name),
                });
            }
            if !mappable
                .harmony_fields
                .contains(&pair.harmony_field.as_str())
            {
                return Err(DomainError::InvalidMapping {
                    field: pair.harmony_field.clone(),
                    reason: format!(
                        "is not a field of Harmony's {} (expected one of {})",
                        mappable.harmony_object,
                        mappable.harmony_fields.join(", ")
                    ),
                });
            }
            if !targets.insert(pair.harmony_field.as_str()) {
                return Err(DomainError::InvalidMapping {
                    field: pair.harmony_field.clone(),
                    reason: "is mapped twice".into(),
                });
            }
        }
        if self
            .mappings
            .get(object)
            .is_some_and(|current| current.fields == fields)
        {
            return Ok(Vec::new());
        }
        Ok(vec![IntegrationEvent::MappingChanged(MappingChanged {
            object: object.to_owned(),
            version: self.mapping_version + 1,
            fields: fields.to_vec(),
        })])
    }
}

impl Aggregate for Integration {
    type Command = IntegrationCommand;
    type Event = IntegrationEvent;

    const SNAPSHOT_SCHEMA: u32 = 1;

    fn handle(
        &self,
        command: &IntegrationCommand,
        context: &CommandContext,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        use IntegrationCommand as C;
        use IntegrationEvent as E;
        match command {
            C::Connect(connect) => return self.connect(connect, context),
            C::Abandon {
                workspace,
                owner,
                app,
                reason,
            } => {
                if !matches!(context.caller, Caller::System { .. }) {
                    return Err(DomainError::Forbidden(
                        "only the service itself records this",
                    ));
                }
                if self.status != Status::New {
                    return Err(DomainError::AlreadyConnected);
                }
                return Ok(vec![E::ConnectionAbandoned(ConnectionAbandoned {
                    workspace: workspace.clone(),
                    owner: owner.clone(),
                    app: app.clone(),
                    reason: reason.clone(),
                })]);
            }
            _ => {}
        }
        let app = self.app()?;
        let caps = &app.capabilities;
        match command {
            C::Connect(_) | C::Abandon { .. } => unreachable!("handled above"),
            C::RecordConnectionTest {
                ok,
                latency_ms,
                answer,
            } => {
                self.authorize(context, Access::Manage)?;
                self.ensure_active()?;
                if !caps.test_connection {
                    return Err(DomainError::Unsupported {
                        app: app.name.to_owned(),
                        capability: "connection tests",
                    });
                }
                Ok(vec![E::ConnectionTested(ConnectionTested {
                    ok: *ok,
                    latency_ms: *latency_ms,
                    answer: answer.clone(),
                })])
            }
            C::RecordCredentialsRefresh {
                credential_ref,
                expires_at,
            } => {
                self.authorize(context, Access::System)?;
                self.ensure_active()?;
                Ok(vec![E::CredentialsRefreshed(CredentialsRefreshed {
                    credential_ref: credential_ref.clone(),
                    expires_at: *expires_at,
                })])
            }
            C::MarkCredentialsExpired { reason, detail } => {
                self.authorize(context, Access::System)?;
                if self.status == Status::NeedsReauth {
                    return Ok(Vec::new());
                }
                self.ensure_active()?;
                let mut events =
                    self.stop_work("needs_reauth", "the provider refused the credentials", true);
                events.push(E::CredentialsExpired(CredentialsExpired {
                    reason: *reason,
                    detail: detail.clone(),
                }));
                Ok(events)
            }
            C::Reauthenticate {
                credential_ref,
                granted_scopes,
                expires_at,
            } => {
                self.authorize(context, Access::Manage)?;
                self.ensure_not_ended()?;
                if !caps.reauth {
                    return Err(DomainError::Unsupported {
                        app: app.name.to_owned(),
                        capability: "re-authentication",
                    });
                }
                Ok(vec![E::Reauthenticated(Reauthenticated {
                    credential_ref: credential_ref.clone(),
                    granted_scopes: granted_scopes.clone(),
                    expires_at: *expires_at,
                })])
            }
            C::RequestSync { sync_id, kind } => {
                let trigger = match &context.caller {
                    Caller::User(principal) => {
                        self.authorize(context, Access::Manage)?;
                        SyncTrigger::Manual {
                            user: principal.user.clone(),
                        }
                    }
                    Caller::System { .. } => SyncTrigger::Schedule,
                };
                self.ensure_active()?;
                let supported = match kind {
                    SyncKind::Full => caps.full_sync,
                    SyncKind::Incremental => caps.incremental_sync,
                };
                if !supported {
                    let capability = if *kind == SyncKind::Full {
                        "full sync"
                    } else {
                        "incremental sync"
                    };
                    return Err(DomainError::Unsupported {
                        app: app.name.to_owned(),
                        capability,
                    });
                }
                let reused = self
                    .running_sync
                    .as_ref()
                    .is_some_and(|r| r.sync_id == *sync_id)
                    || self
                        .last_sync
                        .as_ref()
                        .is_some_and(|l| l.sync_id == *sync_id);
                if reused {
                    return Err(DomainError::SyncIdReused(*sync_id));
                }
                if self.pending_sync.is_some() {
                    // Coalesced: the follow-up run already queued will pick up these changes.
                    return Ok(Vec::new());
                }
                Ok(vec![E::SyncRequested(SyncRequested {
                    sync_id: *sync_id,
                    kind: *kind,
                    trigger,
                })])
            }
            C::StartSync { sync_id, cursor } => {
                self.authorize(context, Access::System)?;
                self.ensure_active()?;
                if self.running_sync.is_some() {
                    return Err(DomainError::SyncAlreadyRunning);
                }
                if self
                    .pending_sync
                    .as_ref()
                    .is_none_or(|pending| pending.sync_id != *sync_id)
                {
                    return Err(DomainError::SyncNotRequested(*sync_id));
                }
                Ok(vec![E::SyncStarted(SyncStarted {
                    sync_id: *sync_id,
                    cursor: cursor.clone(),
                })])
            }
            C::RecordSyncProgress {
                sync_id,
                object,
                page,
                counts,
                cursor,
            } => {
                self.authorize(context, Access::System)?;
                self.running(*sync_id)?;
                Ok(vec![E::SyncProgressed(SyncProgressed {
                    sync_id: *sync_id,
                    object: object.clone(),
                    page: *page,
                    counts: *counts,
                    cursor: cursor.clone(),
                })])
            }
            C::CompleteSync {
                sync_id,
                duration_ms,
            } => {
                self.authorize(context, Access::System)?;
                let running = self.running(*sync_id)?;
                Ok(vec![E::SyncCompleted(SyncCompleted {
                    sync_id: *sync_id,
                    totals: running.totals,
                    duration_ms: *duration_ms,
                })])
            }
            C::FailSync {
                sync_id,
                code,
                message,
                retryable,
            } => {
                self.authorize(context, Access::System)?;
                let totals = match (&self.running_sync, &self.pending_sync) {
                    (Some(running), _) if running.sync_id == *sync_id => running.totals,
                    (_, Some(pending)) if pending.sync_id == *sync_id => RecordCounts::default(),
                    _ => return Err(DomainError::SyncNotRunning(*sync_id)),
                };
                Ok(vec![E::SyncFailed(SyncFailed {
                    sync_id: *sync_id,
                    code: code.clone(),
                    message: message.clone(),
                    retryable: *retryable,
                    totals,
                })])
            }
            C::ChangeMapping {
                object,
                fields,
                discovered_fields,
                expected_version,
            } => {
                self.authorize(context, Access::Manage)?;
                self.ensure_not_ended()?;
                if let Some(expected) = *expected_version {
                    if expected != self.mapping_version {
                        return Err(DomainError::MappingVersionMismatch {
                            expected,
                            current: self.mapping_version,
                        });
                    }
                }
                self.change_mapping(app, object, fields, discovered_fields.as_deref())
            }
            C::ChangeSyncSchedule { every_minutes } => {
                self.authorize(context, Access::Manage)?;
                self.ensure_not_ended()?;
                if !caps.incremental_sync {
                    return Err(DomainError::Unsupported {
                        app: app.name.to_owned(),
                        capability: "scheduled sync",
                    });
                }
                if let Some(minutes) = every_minutes {
                    if !SCHEDULE_MINUTES.contains(minutes) {
                        return Err(DomainError::InvalidSchedule {
                            min: *SCHEDULE_MINUTES.start(),
                            max: *SCHEDULE_MINUTES.end(),
                            got: *minutes,
                        });
                    }
                }
                if self.schedule_minutes == *every_minutes {
                    return Ok(Vec::new());
                }
                Ok(vec![E::SyncScheduleChanged(SyncScheduleChanged {
                    every_minutes: *every_minutes,
                })])
            }
            C::RequestAction {
                action_id,
                tool,
                arguments,
                auto_approval,
            } => {
                self.authorize(context, Access::Use)?;
                let Caller::User(principal) = &context.caller else {
                    return Err(DomainError::Forbidden(
                        "Companion actions are requested on behalf of a user",
                    ));
                };
                self.ensure_active()?;
                let spec = app.tool(tool).ok_or_else(|| DomainError::UnknownTool {
                    app: app.name.to_owned(),
                    tool: tool.clone(),
                })?;
                if matches!(arguments, ActionPayload::Plain(value) if !value.is_object()) {
                    return Err(DomainError::InvalidArguments);
                }
                if self.open_actions.contains_key(action_id) {
                    return Err(DomainError::ActionState {
                        action: *action_id,
                        state: "already requested",
                        expected: "new",
                    });
                }
                let mut events = vec![E::ActionRequested(ActionRequested {
                    action_id: *action_id,
                    tool: tool.clone(),
                    arguments: arguments.clone(),
                    sensitive: spec.sensitive,
                    requested_by: principal.user.clone(),
                })];
                let approver = match (spec.sensitive, auto_approval) {
                    (false, _) => Some(Approver::NotSensitive),
                    (true, Some(rule_id)) => Some(Approver::Rule { rule_id: *rule_id }),
                    (true, None) => None,
                };
                if let Some(by) = approver {
                    events.push(E::ActionApproved(ActionApproved {
                        action_id: *action_id,
                        by,
                        reason: None,
                    }));
                }
                Ok(events)
            }
            C::ApproveAction { action_id, reason } | C::RejectAction { action_id, reason } => {
                self.authorize(context, Access::Manage)?;
                let Caller::User(principal) = &context.caller else {
                    return Err(DomainError::Forbidden(
                        "a person approves or rejects an action",
                    ));
                };
                self.ensure_not_ended()?;
                let action = self.open_action(*action_id)?;
                if action.status != ActionStatus::AwaitingApproval {
                    return Err(DomainError::ActionState {
                        action: *action_id,
                        state: "approved already",
                        expected: "awaiting approval",
                    });
                }
                let user = principal.user.clone();
                Ok(vec![if matches!(command, C::ApproveAction { .. }) {
                    E::ActionApproved(ActionApproved {
                        action_id: *action_id,
                        by: Approver::User { user },
                        reason: reason.clone(),
                    })
                } else {
                    E::ActionRejected(ActionRejected {
                        action_id: *action_id,
                        by: user,
                        reason: reason.clone(),
                    })
                }])
            }
            C::CompleteAction { action_id, .. } | C::FailAction { action_id, .. } => {
                self.authorize(context, Access::System)?;
                let action = self.open_action(*action_id)?;
                if action.status != ActionStatus::Approved {
                    return Err(DomainError::ActionState {
                        action: *action_id,
                        state: "awaiting approval",
                        expected: "approved",
                    });
                }
                Ok(vec![match command {
                    C::CompleteAction { result, .. } => E::ActionCompleted(ActionCompleted {
                        action_id: *action_id,
                        result: result.clone(),
                    }),
                    C::FailAction {
                        error, retryable, ..
                    } => E::ActionFailed(ActionFailed {
                        action_id: *action_id,
                        error: error.clone(),
                        retryable: *retryable,
                    }),
                    _ => unreachable!("matched above"),
                }])
            }
            C::Disconnect {
                reason,
                token_revoked,
            } => {
                self.authorize(context, Access::Manage)?;
                self.ensure_not_ended()?;
                Ok(self.disconnect_events(reason, *token_revoked))
            }
            C::Delete { secrets_shredded } => {
                self.authorize(context, Access::Manage)?;
                let mut events = match self.status {
                    Status::Connected | Status::NeedsReauth => {
                        self.disconnect_events("deleted", false)
                    }
                    Status::Disconnected => Vec::new(),
                    _ => return self.ensure_active().map(|()| Vec::new()),
                };
                events.push(E::Deleted(Deleted {
                    secrets_shredded: *secrets_shredded,
                }));
                Ok(events)
            }
        }
    }

    fn apply(&mut self, event: &IntegrationEvent, metadata: &Metadata) {
        use IntegrationEvent as E;
        match event {
            E::IntegrationConnected(e) => {
                self.profile = Some(Profile {
                    id: e.integration,
                    workspace: e.workspace.clone(),
                    app: e.app.clone(),
                    scope: e.scope.clone(),
                    connected_by: metadata.actor.clone(),
                    connected_at: metadata.occurred_at,
                });
                self.status = Status::Connected;
                self.setup = e.setup.clone();
                self.granted_scopes = e.granted_scopes.clone();
                self.account_label = e.account_label.clone();
                self.credential_ref = Some(e.credential_ref.clone());
                self.token_expires_at = e.token_expires_at;
            }
            E::ConnectionTested(e) => {
                self.last_test = Some(LastTest {
                    ok: e.ok,
                    at: metadata.occurred_at,
                })
            }
            E::CredentialsRefreshed(e) => {
                self.credential_ref = Some(e.credential_ref.clone());
                self.token_expires_at = e.expires_at;
            }
            E::CredentialsExpired(_) => self.status = Status::NeedsReauth,
            E::Reauthenticated(e) => {
                self.status = Status::Connected;
                self.credential_ref = Some(e.credential_ref.clone());
                self.granted_scopes = e.granted_scopes.clone();
                self.token_expires_at = e.expires_at;
            }
            E::SyncRequested(e) => {
                self.pending_sync = Some(PendingSync {
                    sync_id: e.sync_id,
                    kind: e.kind,
                })
            }
            E::SyncStarted(e) => {
                let kind = self
                    .pending_sync
                    .take()
                    .map_or(SyncKind::Full, |pending| pending.kind);
                self.running_sync = Some(RunningSync {
                    sync_id: e.sync_id,
                    kind,
                    started_at: metadata.occurred_at,
                    cursor: e.cursor.clone(),
                    pages: 0,
                    totals: RecordCounts::default(),
                });
            }
            E::SyncProgressed(e) => {
                if let Some(running) = self
                    .running_sync
                    .as_mut()
                    .filter(|r| r.sync_id == e.sync_id)
                {
                    running.pages = running.pages.max(e.page);
                    running.totals.add(&e.counts);
                    running.cursor = e.cursor.clone();
                }
            }
            E::SyncCompleted(e) => {
                self.running_sync = None;
                self.last_sync = Some(LastSync {
                    sync_id: e.sync_id,
                    outcome: SyncOutcome::Completed,
                    finished_at: metadata.occurred_at,
                    totals: e.totals,
                });
            }
            E::SyncFailed(e) => {
                if self
                    .running_sync
                    .as_ref()
                    .is_some_and(|r| r.sync_id == e.sync_id)
                {
                    self.running_sync = None;
                }
                if self
                    .pending_sync
                    .as_ref()
                    .is_some_and(|p| p.sync_id == e.sync_id)
                {
                    self.pending_sync = None;
                }
                self.last_sync = Some(LastSync {
                    sync_id: e.sync_id,
                    outcome: SyncOutcome::Failed {
                        code: e.code.clone(),
                        retryable: e.retryable,
                    },
                    finished_at: metadata.occurred_at,
                    totals: e.totals,
                });
            }
            E::MappingChanged(e) => {
                self.mapping_version = e.version;
                self.mappings.insert(
                    e.object.clone(),
                    ObjectMapping {
                        version: e.version,
                        fields: e.fields.clone(),
                    },
                );
            }
            E::SyncScheduleChanged(e) => self.schedule_minutes = e.every_minutes,
            E::ActionRequested(e) => {
                self.open_actions.insert(
                    e.action_id,
                    OpenAction {
                        tool: e.tool.clone(),
                        arguments: e.arguments.clone(),
                        sensitive: e.sensitive,
                        status: ActionStatus::AwaitingApproval,
                    },
                );
            }
            E::ActionApproved(e) => {
                if let Some(action) = self.open_actions.get_mut(&e.action_id) {
                    action.status = ActionStatus::Approved;
                }
            }
            E::ActionRejected(ActionRejected { action_id, .. })
            | E::ActionCompleted(ActionCompleted { action_id, .. })
            | E::ActionFailed(ActionFailed { action_id, .. }) => {
                self.open_actions.remove(action_id);
            }
            E::Disconnected(_) => {
                // The seed: removing an integration stops future sync and removes its
                // connection configuration. Mappings and history stay.
                self.status = Status::Disconnected;
                self.setup.clear();
                self.granted_scopes.clear();
                self.credential_ref = None;
                self.token_expires_at = None;
                self.schedule_minutes = None;
                self.pending_sync = None;
                self.running_sync = None;
                self.open_actions.clear();
            }
            E::Deleted(_) => self.status = Status::Deleted,
            E::ConnectionAbandoned(_) => self.status = Status::Abandoned,
        }
    }

    fn metadata_for(&self, command: &IntegrationCommand, context: &CommandContext) -> Metadata {
        let (workspace, owner) = match (&self.profile, command, &context.caller) {
            (Some(profile), _, _) => (profile.workspace.clone(), profile.scope.owner().cloned()),
            (
                None,
                IntegrationCommand::Abandon {
                    workspace, owner, ..
                },
                _,
            ) => (workspace.clone(), owner.clone()),
            (None, IntegrationCommand::Connect(connect), Caller::User(principal)) => (
                principal.workspace.clone(),
                (connect.scope == AppScope::Personal).then(|| principal.user.clone()),
            ),
            _ => unreachable!(
                "every other command fails on an unconnected integration before producing events"
            ),
        };
        Metadata {
            workspace,
            owner,
            actor: context.caller.actor(),
            correlation_id: context.correlation_id,
            causation_id: context.causation_id,
            occurred_at: context.now,
        }
    }
}

impl Integration {
    fn running(&self, sync_id: SyncId) -> Result<&RunningSync, DomainError> {
        self.running_sync
            .as_ref()
            .filter(|running| running.sync_id == sync_id)
            .ok_or(DomainError::SyncNotRunning(sync_id))
    }
}
