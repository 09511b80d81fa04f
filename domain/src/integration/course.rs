//! One Companion action's course — requested, approved or rejected, completed or failed —
//! folded from the integration's typed events: what the API answers for an action.

use serde::{Deserialize, Serialize};

use super::events::{ActionPayload, Approver, IntegrationEvent};
use crate::ids::{ActionId, UserId};
use crate::timestamp::Timestamp;

/// Where an action stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    AwaitingApproval,
    Approved,
    Rejected,
    Completed,
    Failed,
}

impl ActionState {
    /// The state as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::AwaitingApproval => "awaiting_approval",
            ActionState::Approved => "approved",
            ActionState::Rejected => "rejected",
            ActionState::Completed => "completed",
            ActionState::Failed => "failed",
        }
    }

    /// Whether nothing more happens to the action.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionState::Rejected | ActionState::Completed | ActionState::Failed
        )
    }
}

/// An action's whole course so far. Arguments and result stay sealed, as the events hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionCourse {
    pub action_id: ActionId,
    pub state: ActionState,
    pub tool: String,
    pub arguments: ActionPayload,
    pub sensitive: bool,
    pub requested_by: UserId,
    pub requested_at: Timestamp,
    pub approved_by: Option<Approver>,
    pub rejected_by: Option<UserId>,
    /// Why it was rejected, when the person said.
    pub reason: Option<String>,
    /// What the provider answered, once completed.
    pub result: Option<ActionPayload>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it completed or failed.
    pub finished_at: Option<Timestamp>,
}

impl super::events::IntegrationEventKind {
    /// Whether events of this kind are part of a Companion action's course.
    pub fn is_action(self) -> bool {
        use super::events::IntegrationEventKind as Kind;
        matches!(
            self,
            Kind::ActionRequested
                | Kind::ActionApproved
                | Kind::ActionRejected
                | Kind::ActionCompleted
                | Kind::ActionFailed
        )
    }
}

impl IntegrationEvent {
    /// The Companion action this event is part of, if it is an action's event.
    pub fn action_id(&self) -> Option<ActionId> {
        match self {
            IntegrationEvent::ActionRequested(e) => Some(e.action_id),
            IntegrationEvent::ActionApproved(e) => Some(e.action_id),
            IntegrationEvent::ActionRejected(e) => Some(e.action_id),
            IntegrationEvent::ActionCompleted(e) => Some(e.action_id),
            IntegrationEvent::ActionFailed(e) => Some(e.action_id),
            _ => None,
        }
    }
}

impl ActionCourse {
    /// Folds `event`, which occurred at `at`, into the course of `action` so far (`None`
    /// before its request). Events of other actions, and anything before the request, leave
    /// it as it was.
    pub fn fold(
        course: Option<Self>,
        action: ActionId,
        event: &IntegrationEvent,
        at: Timestamp,
    ) -> Option<Self> {
        if event.action_id() != Some(action) {
            return course;
        }
        if let IntegrationEvent::ActionRequested(requested) = event {
            return Some(Self {
                action_id: action,
                state: ActionState::AwaitingApproval,
                tool: requested.tool.clone(),
                arguments: requested.arguments.clone(),
                sensitive: requested.sensitive,
                requested_by: requested.requested_by.clone(),
                requested_at: at,
                approved_by: None,
                rejected_by: None,
                reason: None,
                result: None,
                error: None,
                finished_at: None,
            });
        }
        let mut course = course?;
        match event {
            IntegrationEvent::ActionApproved(approved) => {
                course.approved_by = Some(approved.by.clone());
                course.state = ActionState::Approved;
            }
            IntegrationEvent::ActionRejected(rejected) => {
                course.rejected_by = Some(rejected.by.clone());
                course.reason = rejected.reason.clone();
                course.state = ActionState::Rejected;
            }
            IntegrationEvent::ActionCompleted(completed) => {
                course.result = Some(completed.result.clone());
                course.finished_at = Some(at);
                course.state = ActionState::Completed;
            }
            IntegrationEvent::ActionFailed(failed) => {
                course.error = Some(failed.error.clone());
                course.finished_at = Some(at);
                course.state = ActionState::Failed;
            }
            _ => {}
        }
        Some(course)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::integration::events::{
        ActionApproved, ActionCompleted, ActionFailed, ActionRejected, ActionRequested,
    };

    fn requested(action: ActionId) -> IntegrationEvent {
        IntegrationEvent::ActionRequested(ActionRequested {
            action_id: action,
            tool: "create_contact".into(),
            arguments: ActionPayload::Plain(json!({"email": "a@example.com"})),
            sensitive: true,
            requested_by: "ada".parse::<UserId>().unwrap(),
        })
    }

    fn fold_all(action: ActionId, events: &[IntegrationEvent]) -> Option<ActionCourse> {
        events.iter().enumerate().fold(None, |course, (i, event)| {
            let at = Timestamp::from_unix_micros(1_000_000 * (i as i64 + 1)).unwrap();
            ActionCourse::fold(course, action, event, at)
        })
    }

    #[test]
    fn an_approved_action_that_completed_has_its_whole_course() {
        let (action, other) = (ActionId::new(), ActionId::new());
        let course = fold_all(
            action,
            &[
                requested(action),
                requested(other),
                IntegrationEvent::ActionApproved(ActionApproved {
                    action_id: action,
                    by: Approver::NotSensitive,
                    reason: None,
                }),
                IntegrationEvent::ActionFailed(ActionFailed {
                    action_id: other,
                    error: "not this one".into(),
                    retryable: false,
                }),
                IntegrationEvent::ActionCompleted(ActionCompleted {
                    action_id: action,
                    result: ActionPayload::Plain(json!({"id": "7"})),
                }),
            ],
        )
        .unwrap();
        assert_eq!(course.state, ActionState::Completed);
        assert!(course.state.is_final());
        assert_eq!(course.tool, "create_contact");
        assert_eq!(course.approved_by, Some(Approver::NotSensitive));
        assert_eq!(
            course.error, None,
            "another action's failure is not this one's"
        );
        assert_eq!(course.requested_at.unix_micros(), 1_000_000);
        assert_eq!(
            course.finished_at.map(|at| at.unix_micros()),
            Some(5_000_000)
        );
        assert_eq!(
            course.result,
            Some(ActionPayload::Plain(json!({"id": "7"})))
        );
    }

    #[test]
    fn a_rejection_says_who_and_why_and_nothing_comes_before_the_request() {
        let action = ActionId::new();
        let rejected = IntegrationEvent::ActionRejected(ActionRejected {
            action_id: action,
            by: "bob".parse::<UserId>().unwrap(),
            reason: Some("wrong contact".into()),
        });
        assert_eq!(fold_all(action, std::slice::from_ref(&rejected)), None);
        let course = fold_all(action, &[requested(action), rejected]).unwrap();
        assert_eq!(course.state, ActionState::Rejected);
        assert_eq!(
            course.rejected_by.map(|u| u.to_string()),
            Some("bob".into())
        );
        assert_eq!(course.reason.as_deref(), Some("wrong contact"));
        assert_eq!(course.finished_at, None);
    }
}
