//! The `WorkspacePolicy` aggregate: what belongs to a workspace rather than to one integration.
//!
//! - Companion auto-approval rules: a sensitive tool of an app runs without confirmation when a
//!   rule covers it. Workspace rules cover workspace integrations and are set by admins and
//!   integration managers; a personal rule covers one user's own personal integrations and is
//!   set by that user.
//! - Connection slots: one active connection per app per scope owner (the workspace, or the
//!   user for personal apps). Because the log checks the expected version of this stream on
//!   every append, two concurrent connects of the same app can never both reserve the slot,
//!   whatever process they run in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, CommandContext};
use crate::catalog::{self, AppScope};
use crate::error::DomainError;
use crate::event::{event_enum, no_upcasters};
use crate::ids::{IntegrationId, RuleId, UserId, WorkspaceId};
use crate::metadata::Metadata;
use crate::principal::Caller;
use crate::timestamp::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRuleAdded {
    pub rule_id: RuleId,
    pub app: String,
    pub tool: String,
    /// `Some` for a personal rule, which covers only this user's own integrations.
    pub owner: Option<UserId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRuleRemoved {
    pub rule_id: RuleId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSlotReserved {
    pub app: String,
    pub owner: Option<UserId>,
    pub integration: IntegrationId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSlotReleased {
    pub app: String,
    pub owner: Option<UserId>,
    pub integration: IntegrationId,
    pub reason: String,
}

event_enum!(
    /// Every event of a workspace policy stream.
    PolicyEvent, kind = PolicyEventKind, upcast = no_upcasters, {
        ApprovalRuleAdded(ApprovalRuleAdded) = 1,
        ApprovalRuleRemoved(ApprovalRuleRemoved) = 1,
        ConnectionSlotReserved(ConnectionSlotReserved) = 1,
        ConnectionSlotReleased(ConnectionSlotReleased) = 1,
    }
);

/// A change to a workspace's policy.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyChange {
    /// Auto-approve a sensitive tool: for the workspace's integrations, or with `personal` for
    /// the caller's own personal integrations of a personal app.
    AddApprovalRule {
        rule_id: RuleId,
        app: String,
        tool: String,
    },
    RemoveApprovalRule {
        rule_id: RuleId,
    },
    /// Claim the app's slot for a connect in progress.
    ReserveConnectionSlot {
        app: String,
        owner: Option<UserId>,
        integration: IntegrationId,
    },
    /// Free the slot held by `integration` (disconnect, delete, or a connect that failed).
    ReleaseConnectionSlot {
        app: String,
        owner: Option<UserId>,
        integration: IntegrationId,
        reason: String,
    },
}

/// A command on the policy stream of `workspace`.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyCommand {
    pub workspace: WorkspaceId,
    pub change: PolicyChange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    pub app: String,
    pub tool: String,
    pub owner: Option<UserId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHolder {
    pub integration: IntegrationId,
    pub reserved_at: Timestamp,
}

/// How long an unfinished connect holds its app's slot before another connect may close it.
pub const DEFAULT_ABANDON_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// What a connect may do with a slot another integration holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotHolding {
    /// The holder is connected (or waits for a reauth), or its connect may still finish: the
    /// slot is taken.
    Taken,
    /// The holder's connect never finished and `abandon_after` has passed since it reserved
    /// the slot: close the holder as abandoned, then release its slot.
    Abandon,
    /// The holder has ended (disconnected, deleted or abandoned): release its slot.
    Release,
}

impl SlotHolder {
    /// What a connect at `now` may do with this slot, whose holder is in `status`.
    pub fn holding(
        &self,
        status: crate::integration::Status,
        now: Timestamp,
        abandon_after: std::time::Duration,
    ) -> SlotHolding {
        use crate::integration::Status;
        match status {
            Status::Connected | Status::NeedsReauth => SlotHolding::Taken,
            Status::New => {
                let deadline = self
                    .reserved_at
                    .plus(time::Duration::try_from(abandon_after).unwrap_or(time::Duration::MAX));
                if now < deadline {
                    SlotHolding::Taken
                } else {
                    SlotHolding::Abandon
                }
            }
            Status::Disconnected | Status::Deleted | Status::Abandoned => SlotHolding::Release,
        }
    }
}

/// The policy of one workspace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspacePolicy {
    pub rules: BTreeMap<RuleId, ApprovalRule>,
    /// Keyed by `app/owner`, with `ws` as the owner of workspace apps.
    pub slots: BTreeMap<String, SlotHolder>,
}

/// The key of an app's connection slot for an owner.
pub fn slot_key(app: &str, owner: Option<&UserId>) -> String {
    format!("{app}/{}", owner.map_or("ws", UserId::as_str))
}

impl WorkspacePolicy {
    /// Who holds the slot of `app` for `owner`, if anyone.
    pub fn slot(&self, app: &str, owner: Option<&UserId>) -> Option<&SlotHolder> {
        self.slots.get(&slot_key(app, owner))
    }

    /// The rule that auto-approves `tool` of `app` on an integration owned by `owner` (`None`
    /// for a workspace integration), if any.
    pub fn matching_rule(&self, app: &str, tool: &str, owner: Option<&UserId>) -> Option<RuleId> {
        self.rules
            .iter()
            .find(|(_, rule)| rule.app == app && rule.tool == tool && rule.owner.as_ref() == owner)
            .map(|(id, _)| *id)
    }
}

impl Aggregate for WorkspacePolicy {
    type Command = PolicyCommand;
    type Event = PolicyEvent;

    const SNAPSHOT_SCHEMA: u32 = 1;

    fn handle(
        &self,
        command: &PolicyCommand,
        context: &CommandContext,
    ) -> Result<Vec<PolicyEvent>, DomainError> {
        match &command.change {
            PolicyChange::AddApprovalRule { rule_id, app, tool } => {
                let principal = match &context.caller {
                    Caller::User(principal) if principal.workspace == command.workspace => {
                        principal
                    }
                    Caller::User(_) => return Err(DomainError::NotFound),
                    Caller::System { .. } => {
                        return Err(DomainError::Forbidden("approval rules are set by people"))
                    }
                };
                if !principal.role.can_write() {
                    return Err(DomainError::Forbidden("auditors have read-only access"));
                }
                let spec = catalog::app(app).ok_or_else(|| DomainError::UnknownApp(app.clone()))?;
                let tool_spec = spec.tool(tool).ok_or_else(|| DomainError::UnknownTool {
                    app: spec.name.to_owned(),
                    tool: tool.clone(),
                })?;
                if !tool_spec.sensitive {
                    return Err(DomainError::RuleForInsensitiveTool(tool.clone()));
                }
                let owner = match spec.scope {
                    AppScope::Workspace => {
                        if !principal.role.manages_workspace_integrations() {
                            return Err(DomainError::Forbidden(
                                "only admins and members with the integration permission set workspace approval rules",
                            ));
                        }
                        None
                    }
                    AppScope::Personal => Some(principal.user.clone()),
                };
                if self.matching_rule(app, tool, owner.as_ref()).is_some() {
                    return Ok(Vec::new());
                }
                Ok(vec![PolicyEvent::ApprovalRuleAdded(ApprovalRuleAdded {
                    rule_id: *rule_id,
                    app: app.clone(),
                    tool: tool.clone(),
                    owner,
                })])
            }
            PolicyChange::RemoveApprovalRule { rule_id } => {
                let rule = self.rules.get(rule_id).ok_or(DomainError::UnknownRule)?;
                match &context.caller {
                    Caller::User(principal) => {
                        if principal.workspace != command.workspace {
                            return Err(DomainError::NotFound);
                        }
                        match &rule.owner {
                            // Another user's personal rule is not theirs to see.
                            Some(owner) if *owner != principal.user => return Err(DomainError::UnknownRule),
                            Some(_) if !principal.role.can_write() => {
                                return Err(DomainError::Forbidden("auditors have read-only access"))
                            }
                            None if !principal.role.manages_workspace_integrations() => {
                                return Err(DomainError::Forbidden(
                                    "only admins and members with the integration permission remove workspace approval rules",
                                ))
                            }
                            _ => {}
                        }
                    }
                    Caller::System { .. } => {}
                }
                Ok(vec![PolicyEvent::ApprovalRuleRemoved(
                    ApprovalRuleRemoved { rule_id: *rule_id },
                )])
            }
            PolicyChange::ReserveConnectionSlot {
                app,
                owner,
                integration,
            } => {
                if let Some(holder) = self.slot(app, owner.as_ref()) {
                    if holder.integration == *integration {
                        return Ok(Vec::new());
                    }
                    return Err(DomainError::SlotTaken {
                        app: app.clone(),
                        holder: holder.integration,
                    });
                }
                Ok(vec![PolicyEvent::ConnectionSlotReserved(
                    ConnectionSlotReserved {
                        app: app.clone(),
                        owner: owner.clone(),
                        integration: *integration,
                    },
                )])
            }
            PolicyChange::ReleaseConnectionSlot {
                app,
                owner,
                integration,
                reason,
            } => {
                let held_by_it = self
                    .slot(app, owner.as_ref())
                    .is_some_and(|h| h.integration == *integration);
                if !held_by_it {
                    return Ok(Vec::new());
                }
                Ok(vec![PolicyEvent::ConnectionSlotReleased(
                    ConnectionSlotReleased {
                        app: app.clone(),
                        owner: owner.clone(),
                        integration: *integration,
                        reason: reason.clone(),
                    },
                )])
            }
        }
    }

    fn apply(&mut self, event: &PolicyEvent, metadata: &Metadata) {
        match event {
            PolicyEvent::ApprovalRuleAdded(e) => {
                self.rules.insert(
                    e.rule_id,
                    ApprovalRule {
                        app: e.app.clone(),
                        tool: e.tool.clone(),
                        owner: e.owner.clone(),
                    },
                );
            }
            PolicyEvent::ApprovalRuleRemoved(e) => {
                self.rules.remove(&e.rule_id);
            }
            PolicyEvent::ConnectionSlotReserved(e) => {
                self.slots.insert(
                    slot_key(&e.app, e.owner.as_ref()),
                    SlotHolder {
                        integration: e.integration,
                        reserved_at: metadata.occurred_at,
                    },
                );
            }
            PolicyEvent::ConnectionSlotReleased(e) => {
                let key = slot_key(&e.app, e.owner.as_ref());
                if self
                    .slots
                    .get(&key)
                    .is_some_and(|h| h.integration == e.integration)
                {
                    self.slots.remove(&key);
                }
            }
        }
    }

    fn metadata_for(&self, command: &PolicyCommand, context: &CommandContext) -> Metadata {
        let owner = match &command.change {
            PolicyChange::AddApprovalRule { app, .. } => {
                match (&context.caller, catalog::app(app).map(|a| a.scope)) {
                    (Caller::User(principal), Some(AppScope::Personal)) => {
                        Some(principal.user.clone())
                    }
                    _ => None,
                }
            }
            PolicyChange::RemoveApprovalRule { rule_id } => {
                self.rules.get(rule_id).and_then(|rule| rule.owner.clone())
            }
            PolicyChange::ReserveConnectionSlot { owner, .. }
            | PolicyChange::ReleaseConnectionSlot { owner, .. } => owner.clone(),
        };
        Metadata {
            workspace: command.workspace.clone(),
            owner,
            actor: context.caller.actor(),
            correlation_id: context.correlation_id,
            causation_id: context.causation_id,
            occurred_at: context.now,
        }
    }
}
