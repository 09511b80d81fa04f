//! The `Integration` aggregate: one connection of one app, from connect to delete.
//!
//! The state is folded from the integration's own stream. `handle` enforces every rule of
//! DESIGN.md that concerns a single integration: who may act, which actions each status allows,
//! what the app supports, and what disconnect and delete leave behind. The one rule that spans
//! integrations — one active connection per app per scope owner — lives in
//! [`crate::policy::WorkspacePolicy`].
//!
//! `handle` only dispatches: each command is decided by one function, in `connection`
//! (connect, tests, credentials, reauth, disconnect, delete), `syncing` (syncs, mappings, the
//! schedule) or `actions` (Companion actions); `apply` folds the events back into the state.

mod actions;
mod commands;
mod connection;
mod course;
mod events;
mod syncing;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use commands::{ConnectIntegration, IntegrationCommand};
pub use course::{ActionCourse, ActionState};
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
    /// A request made while a worker held the pending run: it runs after that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_sync: Option<PendingSync>,
    pub running_sync: Option<RunningSync>,
    pub last_sync: Option<LastSync>,
    /// When a run last created, updated or deleted a record: the runs after it, however many,
    /// found nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_changed_at: Option<Timestamp>,
    pub last_test: Option<LastTest>,
    pub mapping_version: u32,
    pub mappings: BTreeMap<String, ObjectMapping>,
    pub schedule_minutes: Option<u32>,
    pub open_actions: BTreeMap<ActionId, OpenAction>,
    /// When the user last reauthenticated: a sync that failed before it no longer says how
    /// the integration stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauthenticated_at: Option<Timestamp>,
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
    /// The last sync failed, and nothing since says the integration is well again (a
    /// successful reauth does: the failed run stays in the sync logs).
    pub fn failing(&self) -> bool {
        self.last_sync.as_ref().is_some_and(|last| {
            matches!(last.outcome, SyncOutcome::Failed { .. })
                && self
                    .reauthenticated_at
                    .is_none_or(|reauthenticated| last.finished_at > reauthenticated)
        })
    }

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
}

impl Aggregate for Integration {
    type Command = IntegrationCommand;
    type Event = IntegrationEvent;

    const SNAPSHOT_SCHEMA: u32 = 3;

    fn handle(
        &self,
        command: &IntegrationCommand,
        context: &CommandContext,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        use IntegrationCommand as C;
        // The commands that come before the integration (and its app) exist.
        match command {
            C::Connect(connect) => return self.connect(connect, context),
            C::Abandon {
                workspace,
                owner,
                app,
                reason,
            } => return self.abandon(context, workspace, owner, app, reason),
            _ => {}
        }
        let app = self.app()?;
        match command {
            C::Connect(_) | C::Abandon { .. } => unreachable!("decided above"),
            C::RecordConnectionTest {
                ok,
                latency_ms,
                answer,
            } => self.record_connection_test(app, context, ok, latency_ms, answer),
            C::RecordCredentialsRefresh {
                credential_ref,
                expires_at,
            } => self.record_credentials_refresh(context, credential_ref, expires_at),
            C::MarkCredentialsExpired { reason, detail } => {
                self.mark_credentials_expired(context, reason, detail)
            }
            C::Reauthenticate {
                credential_ref,
                granted_scopes,
                expires_at,
            } => self.reauthenticate(app, context, credential_ref, granted_scopes, expires_at),
            C::RequestSync {
                sync_id,
                kind,
                claimed,
            } => self.request_sync(app, context, sync_id, kind, *claimed),
            C::StartSync { sync_id, cursor } => self.start_sync(context, sync_id, cursor),
            C::RecordSyncProgress {
                sync_id,
                object,
                page,
                counts,
                cursor,
            } => self.record_sync_progress(context, sync_id, object, page, counts, cursor),
            C::CompleteSync {
                sync_id,
                duration_ms,
                unrecorded,
                detail,
            } => self.complete_sync(context, sync_id, duration_ms, unrecorded, detail),
            C::FailSync {
                sync_id,
                code,
                message,
                retryable,
                unrecorded,
                detail,
            } => {
                let ended = syncing::Ended {
                    code,
                    message,
                    retryable: *retryable,
                };
                self.fail_sync(context, sync_id, ended, unrecorded, detail)
            }
            C::ChangeMapping {
                object,
                fields,
                discovered_fields,
                expected_version,
            } => self.change_mapping(
                app,
                context,
                object,
                fields,
                discovered_fields,
                expected_version,
            ),
            C::ChangeSyncSchedule { every_minutes } => {
                self.change_sync_schedule(app, context, every_minutes)
            }
            C::RequestAction {
                action_id,
                tool,
                arguments,
                auto_approval,
            } => self.request_action(app, context, action_id, tool, arguments, auto_approval),
            C::ApproveAction { action_id, reason } => {
                self.judge_action(context, action_id, reason, true)
            }
            C::RejectAction { action_id, reason } => {
                self.judge_action(context, action_id, reason, false)
            }
            C::CompleteAction { action_id, result } => self.finish_action(
                context,
                action_id,
                IntegrationEvent::ActionCompleted(ActionCompleted {
                    action_id: *action_id,
                    result: result.clone(),
                }),
            ),
            C::FailAction {
                action_id,
                error,
                retryable,
            } => self.finish_action(
                context,
                action_id,
                IntegrationEvent::ActionFailed(ActionFailed {
                    action_id: *action_id,
                    error: error.clone(),
                    retryable: *retryable,
                }),
            ),
            C::Disconnect {
                reason,
                token_revoked,
            } => self.disconnect(context, reason, token_revoked),
            C::Delete { secrets_shredded } => self.delete(context, secrets_shredded),
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
                self.reauthenticated_at = Some(metadata.occurred_at);
                self.credential_ref = Some(e.credential_ref.clone());
                self.granted_scopes = e.granted_scopes.clone();
                self.token_expires_at = e.expires_at;
            }
            E::SyncRequested(e) => {
                let request = PendingSync {
                    sync_id: e.sync_id,
                    kind: e.kind,
                };
                if e.follow_up && self.pending_sync.is_some() {
                    self.queued_sync = Some(request);
                } else {
                    self.pending_sync = Some(request);
                }
            }
            E::SyncStarted(e) => {
                let kind = self
                    .pending_sync
                    .take()
                    .map_or(SyncKind::Full, |pending| pending.kind);
                // The run is under way: a follow-up queued behind it is now simply pending.
                self.pending_sync = self.queued_sync.take();
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
                self.end_sync(e.sync_id, &e.totals, metadata.occurred_at);
                self.last_sync = Some(LastSync {
                    sync_id: e.sync_id,
                    outcome: SyncOutcome::Completed,
                    finished_at: metadata.occurred_at,
                    totals: e.totals,
                });
            }
            E::SyncFailed(e) => {
                self.end_sync(e.sync_id, &e.totals, metadata.occurred_at);
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
                self.queued_sync = None;
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
    /// Run `sync_id` ended, running or still pending (a run that found nothing never starts):
    /// a follow-up queued behind a pending run takes its place.
    fn end_sync(&mut self, sync_id: SyncId, totals: &RecordCounts, at: Timestamp) {
        if self
            .running_sync
            .as_ref()
            .is_some_and(|r| r.sync_id == sync_id)
        {
            self.running_sync = None;
        }
        if self
            .pending_sync
            .as_ref()
            .is_some_and(|p| p.sync_id == sync_id)
        {
            self.pending_sync = self.queued_sync.take();
        }
        if totals.changed() {
            self.last_changed_at = Some(at);
        }
    }

    fn running(&self, sync_id: SyncId) -> Result<&RunningSync, DomainError> {
        self.running_sync
            .as_ref()
            .filter(|running| running.sync_id == sync_id)
            .ok_or(DomainError::SyncNotRunning(sync_id))
    }
}
