//! Deciding Companion actions: request, approval or rejection, and outcome.

use super::*;
use crate::ids::RuleId;
use IntegrationEvent as E;

impl Integration {
    /// Companion asks to use a tool: approved at once unless the tool is sensitive and no
    /// workspace rule approves it.
    pub(super) fn request_action(
        &self,
        app: &App,
        context: &CommandContext,
        action_id: &ActionId,
        tool: &str,
        arguments: &ActionPayload,
        auto_approval: &Option<RuleId>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::Use)?;
        let Caller::User(principal) = &context.caller else {
            return Err(DomainError::Forbidden(
                "Companion actions are requested on behalf of a user",
            ));
        };
        self.ensure_active()?;
        let spec = app.tool(tool).ok_or_else(|| DomainError::UnknownTool {
            app: app.name.to_owned(),
            tool: tool.to_owned(),
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
            tool: tool.to_owned(),
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

    /// A person approves (`approve`) or rejects an action awaiting approval.
    pub(super) fn judge_action(
        &self,
        context: &CommandContext,
        action_id: &ActionId,
        reason: &Option<String>,
        approve: bool,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
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
        Ok(vec![if approve {
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

    /// An approved action's outcome (system only): `outcome` is its `ActionCompleted` or
    /// `ActionFailed`.
    pub(super) fn finish_action(
        &self,
        context: &CommandContext,
        action_id: &ActionId,
        outcome: IntegrationEvent,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        let action = self.open_action(*action_id)?;
        if action.status != ActionStatus::Approved {
            return Err(DomainError::ActionState {
                action: *action_id,
                state: "awaiting approval",
                expected: "approved",
            });
        }
        Ok(vec![outcome])
    }

    pub(super) fn open_action(&self, action_id: ActionId) -> Result<&OpenAction, DomainError> {
        self.open_actions
            .get(&action_id)
            .ok_or(DomainError::UnknownAction(action_id))
    }
}
