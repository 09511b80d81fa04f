//! Given / when / then: the workspace policy (approval rules and connection slots).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use common::*;
use domain::policy::*;
use domain::testing::Given;
use domain::{
    CommandContext, DomainError, ErrorKind, IntegrationId, Metadata, RuleId, WorkspacePolicy,
};

fn cmd(change: PolicyChange) -> PolicyCommand {
    PolicyCommand {
        workspace: ws(),
        change,
    }
}

fn add(rule_id: RuleId, app: &str, tool: &str) -> PolicyCommand {
    cmd(PolicyChange::AddApprovalRule {
        rule_id,
        app: app.into(),
        tool: tool.into(),
    })
}

fn added(rule_id: RuleId, app: &str, tool: &str, owner: Option<&str>) -> (PolicyEvent, Metadata) {
    (
        PolicyEvent::ApprovalRuleAdded(ApprovalRuleAdded {
            rule_id,
            app: app.into(),
            tool: tool.into(),
            owner: owner.map(user),
        }),
        meta(),
    )
}

fn reserve(app: &str, integration: IntegrationId) -> PolicyCommand {
    cmd(PolicyChange::ReserveConnectionSlot {
        app: app.into(),
        owner: None,
        integration,
    })
}

fn reserved(app: &str, integration: IntegrationId) -> (PolicyEvent, Metadata) {
    (
        PolicyEvent::ConnectionSlotReserved(ConnectionSlotReserved {
            app: app.into(),
            owner: None,
            integration,
        }),
        meta(),
    )
}

#[test]
fn an_admin_adds_a_workspace_rule_for_a_sensitive_tool() {
    let rule_id = RuleId::new();
    let state = Given::<WorkspacePolicy>::no_events()
        .when(add(rule_id, "twilio", "send_sms"), &admin())
        .then_expect(vec![PolicyEvent::ApprovalRuleAdded(ApprovalRuleAdded {
            rule_id,
            app: "twilio".into(),
            tool: "send_sms".into(),
            owner: None,
        })]);
    assert_eq!(
        state.matching_rule("twilio", "send_sms", None),
        Some(rule_id)
    );
    assert_eq!(
        state.matching_rule("twilio", "send_sms", Some(&user("max"))),
        None,
        "a workspace rule covers no personal integration"
    );
}

#[test]
fn the_same_rule_twice_records_nothing() {
    let rule_id = RuleId::new();
    Given::<WorkspacePolicy>::events(vec![added(rule_id, "twilio", "send_sms", None)])
        .when(add(RuleId::new(), "twilio", "send_sms"), &manager())
        .then_expect(vec![]);
}

#[test]
fn rules_are_only_for_sensitive_tools_that_exist() {
    Given::<WorkspacePolicy>::no_events()
        .when(add(RuleId::new(), "twilio", "list_calls"), &admin())
        .then_expect_error(DomainError::RuleForInsensitiveTool("list_calls".into()));
    Given::<WorkspacePolicy>::no_events()
        .when(add(RuleId::new(), "twilio", "fax"), &admin())
        .then_expect_error(DomainError::UnknownTool {
            app: "Twilio".into(),
            tool: "fax".into(),
        });
}

#[test]
fn members_without_the_permission_and_auditors_set_no_workspace_rule() {
    for ctx in [member(), auditor()] {
        let error = Given::<WorkspacePolicy>::no_events()
            .when(add(RuleId::new(), "twilio", "send_sms"), &ctx)
            .result()
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Forbidden);
    }
}

#[test]
fn a_member_sets_a_personal_rule_for_their_own_integrations() {
    let rule_id = RuleId::new();
    let state = Given::<WorkspacePolicy>::no_events()
        .when(add(rule_id, "gmail", "send_email"), &member())
        .then_expect(vec![PolicyEvent::ApprovalRuleAdded(ApprovalRuleAdded {
            rule_id,
            app: "gmail".into(),
            tool: "send_email".into(),
            owner: Some(user("max")),
        })]);
    assert_eq!(
        state.matching_rule("gmail", "send_email", Some(&user("max"))),
        Some(rule_id)
    );
    assert_eq!(
        state.matching_rule("gmail", "send_email", Some(&user("zoe"))),
        None
    );
}

#[test]
fn rules_are_removed_by_who_may_set_them() {
    let (workspace_rule, personal_rule) = (RuleId::new(), RuleId::new());
    let history = || {
        vec![
            added(workspace_rule, "twilio", "send_sms", None),
            added(personal_rule, "gmail", "send_email", Some("max")),
        ]
    };
    Given::<WorkspacePolicy>::events(history())
        .when(
            cmd(PolicyChange::RemoveApprovalRule {
                rule_id: workspace_rule,
            }),
            &admin(),
        )
        .then_expect(vec![PolicyEvent::ApprovalRuleRemoved(
            ApprovalRuleRemoved {
                rule_id: workspace_rule,
            },
        )]);
    let error = Given::<WorkspacePolicy>::events(history())
        .when(
            cmd(PolicyChange::RemoveApprovalRule {
                rule_id: workspace_rule,
            }),
            &member(),
        )
        .result()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden);
    // Another user's personal rule is invisible, even to an admin.
    Given::<WorkspacePolicy>::events(history())
        .when(
            cmd(PolicyChange::RemoveApprovalRule {
                rule_id: personal_rule,
            }),
            &admin(),
        )
        .then_expect_error(DomainError::UnknownRule);
    assert!(Given::<WorkspacePolicy>::events(history())
        .when(
            cmd(PolicyChange::RemoveApprovalRule {
                rule_id: personal_rule
            }),
            &member()
        )
        .result()
        .is_ok());
    Given::<WorkspacePolicy>::no_events()
        .when(
            cmd(PolicyChange::RemoveApprovalRule {
                rule_id: RuleId::new(),
            }),
            &admin(),
        )
        .then_expect_error(DomainError::UnknownRule);
}

#[test]
fn a_policy_of_another_workspace_is_not_found() {
    Given::<WorkspacePolicy>::no_events()
        .when(add(RuleId::new(), "twilio", "send_sms"), &outsider())
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn one_connection_per_app_per_owner() {
    let (first, second) = (IntegrationId::new(), IntegrationId::new());
    let state = Given::<WorkspacePolicy>::no_events()
        .when(reserve("hubspot", first), &admin())
        .then_expect(vec![reserved("hubspot", first).0]);
    assert_eq!(state.slot("hubspot", None).unwrap().integration, first);
    Given::<WorkspacePolicy>::events(vec![reserved("hubspot", first)])
        .when(reserve("hubspot", second), &admin())
        .then_expect_error(DomainError::SlotTaken {
            app: "hubspot".into(),
            holder: first,
        });
    // Another app, or the same personal app for another owner, has its own slot.
    assert!(
        Given::<WorkspacePolicy>::events(vec![reserved("hubspot", first)])
            .when(reserve("salesforce", second), &admin())
            .result()
            .is_ok()
    );
    let personal = |owner: &str, integration| {
        cmd(PolicyChange::ReserveConnectionSlot {
            app: "gmail".into(),
            owner: Some(user(owner)),
            integration,
        })
    };
    let state = Given::<WorkspacePolicy>::no_events()
        .when(personal("max", first), &member())
        .then_expect(vec![PolicyEvent::ConnectionSlotReserved(
            ConnectionSlotReserved {
                app: "gmail".into(),
                owner: Some(user("max")),
                integration: first,
            },
        )]);
    assert!(state.handle_ok(personal("zoe", second), &member()));
    // Reserving again for the same integration is a no-op (a retried connect).
    Given::<WorkspacePolicy>::events(vec![reserved("hubspot", first)])
        .when(reserve("hubspot", first), &admin())
        .then_expect(vec![]);
}

#[test]
fn a_slot_is_released_only_by_its_holder() {
    let (holder, other) = (IntegrationId::new(), IntegrationId::new());
    let release = |integration| {
        cmd(PolicyChange::ReleaseConnectionSlot {
            app: "hubspot".into(),
            owner: None,
            integration,
            reason: "disconnected".into(),
        })
    };
    Given::<WorkspacePolicy>::events(vec![reserved("hubspot", holder)])
        .when(release(other), &system())
        .then_expect(vec![]);
    let state = Given::<WorkspacePolicy>::events(vec![reserved("hubspot", holder)])
        .when(release(holder), &system())
        .then_expect(vec![PolicyEvent::ConnectionSlotReleased(
            ConnectionSlotReleased {
                app: "hubspot".into(),
                owner: None,
                integration: holder,
                reason: "disconnected".into(),
            },
        )]);
    assert!(state.slot("hubspot", None).is_none());
}

trait HandleOk {
    fn handle_ok(&self, command: PolicyCommand, context: &CommandContext) -> bool;
}

impl HandleOk for WorkspacePolicy {
    fn handle_ok(&self, command: PolicyCommand, context: &CommandContext) -> bool {
        domain::Aggregate::handle(self, &command, context).is_ok_and(|events| !events.is_empty())
    }
}
