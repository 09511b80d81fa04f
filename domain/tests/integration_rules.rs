//! Given / when / then: every rule and transition of the `Integration` aggregate.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use common::*;
use domain::catalog::AppScope;
use domain::integration::*;
use domain::testing::Given;
use domain::{
    ActionId, CredentialRef, DomainError, ErrorKind, Integration, IntegrationCommand as C,
    IntegrationEvent as E, Role, RuleId, SyncId,
};
use serde_json::json;

fn given(events: Vec<(E, domain::Metadata)>) -> Given<Integration> {
    Given::events(events)
}

fn requested(sync_id: SyncId) -> (E, domain::Metadata) {
    with_meta(E::SyncRequested(SyncRequested {
        follow_up: false,
        sync_id,
        kind: SyncKind::Full,
        trigger: SyncTrigger::Manual { user: user("ada") },
    }))
}

fn started(sync_id: SyncId) -> (E, domain::Metadata) {
    with_meta(E::SyncStarted(SyncStarted {
        sync_id,
        cursor: None,
    }))
}

fn expired() -> (E, domain::Metadata) {
    with_meta(E::CredentialsExpired(CredentialsExpired {
        reason: ExpiryReason::Revoked,
        detail: "revoked".into(),
    }))
}

fn disconnected() -> (E, domain::Metadata) {
    with_meta(E::Disconnected(Disconnected {
        reason: "admin".into(),
        token_revoked: true,
    }))
}

fn counts(pulled: u64, created: u64) -> RecordCounts {
    RecordCounts {
        pulled,
        created,
        updated: 0,
        deleted: 0,
    }
}

// ---- connect -------------------------------------------------------------------------------

#[test]
fn an_admin_connects_a_workspace_app() {
    let command = connect_command(
        "salesforce",
        AppScope::Workspace,
        &[("instance_url", "https://acme.my.salesforce.com")],
    );
    let events = Given::<Integration>::no_events()
        .when(C::Connect(command.clone()), &admin())
        .result()
        .unwrap();
    let [E::IntegrationConnected(connected)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(connected.integration, command.integration);
    assert_eq!(connected.workspace, ws());
    assert_eq!(connected.scope, Scope::Workspace);
    assert_eq!(
        connected.setup["instance_url"],
        "https://acme.my.salesforce.com"
    );
}

#[test]
fn a_member_with_the_integration_permission_connects_a_workspace_app() {
    let command = connect_command("hubspot", AppScope::Workspace, &[]);
    assert!(Given::<Integration>::no_events()
        .when(C::Connect(command), &manager())
        .result()
        .is_ok());
}

#[test]
fn a_member_without_the_permission_cannot_connect_a_workspace_app() {
    Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("hubspot", AppScope::Workspace, &[])),
            &member(),
        )
        .then_expect_error_kind(ErrorKind::Forbidden);
}

#[test]
fn an_auditor_cannot_connect_anything() {
    let error = Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("todoist", AppScope::Personal, &[])),
            &auditor(),
        )
        .result()
        .unwrap_err();
    assert_eq!(
        error,
        DomainError::Forbidden("auditors have read-only access")
    );
}

#[test]
fn any_member_connects_a_personal_app_which_belongs_to_them() {
    let events = Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("google-calendar", AppScope::Personal, &[])),
            &member(),
        )
        .result()
        .unwrap();
    let [E::IntegrationConnected(connected)] = events.as_slice() else {
        panic!()
    };
    assert_eq!(connected.scope, Scope::Personal { owner: user("max") });
}

#[test]
fn an_app_is_connected_only_in_its_own_scope() {
    Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("hubspot", AppScope::Personal, &[])),
            &admin(),
        )
        .then_expect_error(DomainError::ScopeMismatch {
            app: "HubSpot".into(),
            expected: "workspace",
            requested: "personal",
        });
}

#[test]
fn an_unknown_app_is_refused() {
    Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("myspace", AppScope::Workspace, &[])),
            &admin(),
        )
        .then_expect_error(DomainError::UnknownApp("myspace".into()));
}

#[test]
fn a_required_setup_field_must_be_given() {
    Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("salesforce", AppScope::Workspace, &[])),
            &admin(),
        )
        .then_expect_error(DomainError::InvalidSetup {
            field: "instance_url".into(),
            reason: "is required".into(),
        });
}

#[test]
fn setup_fields_are_validated_by_their_kind() {
    let twilio = connect_command(
        "twilio",
        AppScope::Workspace,
        &[
            ("account_sid", "AC0123456789abcdef0123456789abcdef"),
            ("region", "mars1"),
        ],
    );
    let error = Given::<Integration>::no_events()
        .when(C::Connect(twilio), &admin())
        .result()
        .unwrap_err();
    assert_eq!(error.code(), "invalid_setup");
    assert!(
        error.to_string().contains("region") && error.to_string().contains("us1"),
        "{error}"
    );
    let insecure = connect_command(
        "salesforce",
        AppScope::Workspace,
        &[("instance_url", "http://acme.my.salesforce.com")],
    );
    let error = Given::<Integration>::no_events()
        .when(C::Connect(insecure), &admin())
        .result()
        .unwrap_err();
    assert_eq!(error.code(), "invalid_setup");
}

#[test]
fn a_secret_never_reaches_the_log_as_a_setup_field() {
    let command = connect_command(
        "zendesk",
        AppScope::Workspace,
        &[
            ("subdomain", "acme"),
            ("email", "a@acme.com"),
            ("api_token", "s3cret"),
        ],
    );
    let error = Given::<Integration>::no_events()
        .when(C::Connect(command), &admin())
        .result()
        .unwrap_err();
    assert!(
        matches!(&error, DomainError::InvalidSetup { field, .. } if field == "api_token"),
        "{error:?}"
    );
    assert!(
        !error.to_string().contains("s3cret"),
        "the error repeats the secret"
    );
}

#[test]
fn an_unknown_setup_field_is_refused() {
    let command = connect_command("hubspot", AppScope::Workspace, &[("portal", "1")]);
    let error = Given::<Integration>::no_events()
        .when(C::Connect(command), &admin())
        .result()
        .unwrap_err();
    assert!(matches!(error, DomainError::InvalidSetup { field, .. } if field == "portal"));
}

#[test]
fn an_integration_is_connected_once() {
    given(vec![hubspot()])
        .when(
            C::Connect(connect_command("hubspot", AppScope::Workspace, &[])),
            &admin(),
        )
        .then_expect_error(DomainError::AlreadyConnected);
}

#[test]
fn the_system_cannot_connect_on_its_own() {
    Given::<Integration>::no_events()
        .when(
            C::Connect(connect_command("hubspot", AppScope::Workspace, &[])),
            &system(),
        )
        .then_expect_error_kind(ErrorKind::Forbidden);
}

#[test]
fn commands_on_an_unknown_integration_are_not_found() {
    Given::<Integration>::no_events()
        .when(
            C::Disconnect {
                reason: "x".into(),
                token_revoked: false,
            },
            &admin(),
        )
        .then_expect_error(DomainError::NotFound);
}

// ---- who may see and act -------------------------------------------------------------------

#[test]
fn another_users_personal_integration_is_not_found_even_for_an_admin() {
    given(vec![gcal_of("max")])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id: SyncId::new(),
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect_error(DomainError::NotFound);
    let state = given(vec![gcal_of("max")]).state().clone();
    assert!(state.visible_to(&member().caller));
    assert!(!state.visible_to(&admin().caller));
}

#[test]
fn an_integration_of_another_workspace_is_not_found() {
    given(vec![hubspot()])
        .when(
            C::Disconnect {
                reason: "x".into(),
                token_revoked: false,
            },
            &outsider(),
        )
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn auditors_change_nothing() {
    given(vec![hubspot()])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id: SyncId::new(),
                kind: SyncKind::Full,
            },
            &auditor(),
        )
        .then_expect_error(DomainError::Forbidden("auditors have read-only access"));
}

#[test]
fn a_member_without_the_permission_changes_no_workspace_integration() {
    for command in [
        C::RequestSync {
            claimed: false,
            sync_id: SyncId::new(),
            kind: SyncKind::Full,
        },
        C::Disconnect {
            reason: "x".into(),
            token_revoked: false,
        },
        C::Delete {
            secrets_shredded: true,
        },
        C::ChangeSyncSchedule {
            every_minutes: Some(60),
        },
        C::RecordConnectionTest {
            ok: true,
            latency_ms: 5,
            answer: "ok".into(),
        },
    ] {
        let error = given(vec![hubspot()])
            .when(command.clone(), &member())
            .result()
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Forbidden, "{command:?}");
    }
}

#[test]
fn the_owner_manages_their_personal_integration() {
    let sync_id = SyncId::new();
    given(vec![gcal_of("max")])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id,
                kind: SyncKind::Full,
            },
            &member(),
        )
        .then_expect(vec![E::SyncRequested(SyncRequested {
            follow_up: false,
            sync_id,
            kind: SyncKind::Full,
            trigger: SyncTrigger::Manual { user: user("max") },
        })]);
}

#[test]
fn facts_only_the_service_reports_are_refused_from_users() {
    let sync_id = SyncId::new();
    for command in [
        C::RecordCredentialsRefresh {
            credential_ref: CredentialRef("v".into()),
            expires_at: None,
        },
        C::MarkCredentialsExpired {
            reason: ExpiryReason::Expired,
            detail: "x".into(),
        },
        C::StartSync {
            sync_id,
            cursor: None,
        },
        C::CompleteSync {
            sync_id,
            duration_ms: 1,
            unrecorded: Default::default(),
            detail: None,
        },
    ] {
        let error = given(vec![hubspot(), requested(sync_id)])
            .when(command.clone(), &admin())
            .result()
            .unwrap_err();
        assert_eq!(
            error,
            DomainError::Forbidden("only the service itself records this"),
            "{command:?}"
        );
    }
}

// ---- test, refresh, expiry, reauth ---------------------------------------------------------

#[test]
fn a_connection_test_is_recorded() {
    let state = given(vec![hubspot()])
        .when(
            C::RecordConnectionTest {
                ok: true,
                latency_ms: 42,
                answer: "portal 123".into(),
            },
            &admin(),
        )
        .then_expect(vec![E::ConnectionTested(ConnectionTested {
            ok: true,
            latency_ms: 42,
            answer: "portal 123".into(),
        })]);
    assert!(state.last_test.unwrap().ok);
}

#[test]
fn a_test_is_rejected_while_reauth_is_needed() {
    given(vec![hubspot(), expired()])
        .when(
            C::RecordConnectionTest {
                ok: true,
                latency_ms: 1,
                answer: String::new(),
            },
            &admin(),
        )
        .then_expect_error(DomainError::NeedsReauth);
}

#[test]
fn a_test_is_rejected_while_disconnected() {
    given(vec![hubspot(), disconnected()])
        .when(
            C::RecordConnectionTest {
                ok: true,
                latency_ms: 1,
                answer: String::new(),
            },
            &admin(),
        )
        .then_expect_error(DomainError::Disconnected);
}

#[test]
fn a_refresh_replaces_the_credential_reference() {
    let state = given(vec![hubspot()])
        .when(
            C::RecordCredentialsRefresh {
                credential_ref: CredentialRef("vault:test:2".into()),
                expires_at: None,
            },
            &system(),
        )
        .then_expect(vec![E::CredentialsRefreshed(CredentialsRefreshed {
            credential_ref: CredentialRef("vault:test:2".into()),
            expires_at: None,
        })]);
    assert_eq!(
        state.credential_ref,
        Some(CredentialRef("vault:test:2".into()))
    );
}

#[test]
fn expired_credentials_stop_the_running_and_pending_syncs() {
    let (running, pending) = (SyncId::new(), SyncId::new());
    let progress = with_meta(E::SyncProgressed(SyncProgressed {
        sync_id: running,
        object: "contacts".into(),
        page: 1,
        counts: counts(10, 10),
        cursor: Some("c1".into()),
    }));
    let state = given(vec![
        hubspot(),
        requested(running),
        started(running),
        progress,
        requested(pending),
    ])
    .when(
        C::MarkCredentialsExpired {
            reason: ExpiryReason::InvalidGrant,
            detail: "invalid_grant".into(),
        },
        &system(),
    )
    .then_expect(vec![
        E::SyncFailed(SyncFailed {
            sync_id: running,
            code: "needs_reauth".into(),
            message: "the provider refused the credentials".into(),
            retryable: true,
            totals: counts(10, 10),
            detail: None,
        }),
        E::SyncFailed(SyncFailed {
            sync_id: pending,
            code: "needs_reauth".into(),
            message: "the provider refused the credentials".into(),
            retryable: true,
            totals: RecordCounts::default(),
            detail: None,
        }),
        E::CredentialsExpired(CredentialsExpired {
            reason: ExpiryReason::InvalidGrant,
            detail: "invalid_grant".into(),
        }),
    ]);
    assert_eq!(state.status, Status::NeedsReauth);
    assert!(state.running_sync.is_none() && state.pending_sync.is_none());
    assert_eq!(
        state.available_actions(),
        ["reauth", "mappings", "disconnect", "delete"]
    );
}

#[test]
fn expiring_twice_changes_nothing() {
    given(vec![hubspot(), expired()])
        .when(
            C::MarkCredentialsExpired {
                reason: ExpiryReason::Expired,
                detail: String::new(),
            },
            &system(),
        )
        .then_expect(vec![]);
}

#[test]
fn reauth_reconnects_and_keeps_the_integration_and_its_mappings() {
    let mapping = with_meta(E::MappingChanged(MappingChanged {
        object: "contacts".into(),
        version: 1,
        fields: vec![FieldMapping {
            provider_field: "email".into(),
            harmony_field: "email".into(),
            transform: None,
        }],
    }));
    let history = vec![hubspot(), mapping, expired()];
    let before = given(history.clone()).state().clone();
    let after = given(history)
        .when(
            C::Reauthenticate {
                credential_ref: CredentialRef("vault:test:3".into()),
                granted_scopes: vec!["oauth".into()],
                expires_at: None,
            },
            &admin(),
        )
        .then_expect(vec![E::Reauthenticated(Reauthenticated {
            credential_ref: CredentialRef("vault:test:3".into()),
            granted_scopes: vec!["oauth".into()],
            expires_at: None,
        })]);
    assert_eq!(after.status, Status::Connected);
    assert_eq!(after.profile, before.profile);
    assert_eq!(after.mappings, before.mappings);
}

#[test]
fn reauth_is_refused_once_disconnected() {
    given(vec![hubspot(), disconnected()])
        .when(
            C::Reauthenticate {
                credential_ref: CredentialRef("v".into()),
                granted_scopes: vec![],
                expires_at: None,
            },
            &admin(),
        )
        .then_expect_error(DomainError::Disconnected);
}

// ---- syncs ---------------------------------------------------------------------------------

#[test]
fn a_sync_is_rejected_while_reauth_is_needed() {
    given(vec![hubspot(), expired()])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id: SyncId::new(),
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect_error(DomainError::NeedsReauth);
}

#[test]
fn a_manual_sync_records_who_asked_and_a_scheduled_one_says_schedule() {
    let sync_id = SyncId::new();
    given(vec![hubspot()])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id,
                kind: SyncKind::Full,
            },
            &manager(),
        )
        .then_expect(vec![E::SyncRequested(SyncRequested {
            follow_up: false,
            sync_id,
            kind: SyncKind::Full,
            trigger: SyncTrigger::Manual { user: user("mia") },
        })]);
    given(vec![hubspot()])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id,
                kind: SyncKind::Incremental,
            },
            &system(),
        )
        .then_expect(vec![E::SyncRequested(SyncRequested {
            follow_up: false,
            sync_id,
            kind: SyncKind::Incremental,
            trigger: SyncTrigger::Schedule,
        })]);
}

#[test]
fn a_request_while_one_is_pending_is_coalesced() {
    let first = SyncId::new();
    given(vec![hubspot(), requested(first)])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id: SyncId::new(),
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect(vec![]);
}

#[test]
fn a_request_during_a_run_queues_one_follow_up() {
    let (running, follow_up) = (SyncId::new(), SyncId::new());
    let state = given(vec![hubspot(), requested(running), started(running)])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id: follow_up,
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect(vec![E::SyncRequested(SyncRequested {
            follow_up: false,
            sync_id: follow_up,
            kind: SyncKind::Full,
            trigger: SyncTrigger::Manual { user: user("ada") },
        })]);
    assert_eq!(state.running_sync.unwrap().sync_id, running);
    assert_eq!(state.pending_sync.unwrap().sync_id, follow_up);
}

fn follow_up(sync_id: SyncId) -> (E, domain::Metadata) {
    with_meta(E::SyncRequested(SyncRequested {
        follow_up: true,
        sync_id,
        kind: SyncKind::Incremental,
        trigger: SyncTrigger::Schedule,
    }))
}

#[test]
fn a_request_while_a_worker_holds_the_pending_run_queues_one_follow_up() {
    let (pending, next, later) = (SyncId::new(), SyncId::new(), SyncId::new());
    let state = given(vec![hubspot(), requested(pending)])
        .when(
            C::RequestSync {
                claimed: true,
                sync_id: next,
                kind: SyncKind::Incremental,
            },
            &system(),
        )
        .then_expect(vec![E::SyncRequested(SyncRequested {
            follow_up: true,
            sync_id: next,
            kind: SyncKind::Incremental,
            trigger: SyncTrigger::Schedule,
        })]);
    assert_eq!(state.pending_sync.unwrap().sync_id, pending);
    assert_eq!(state.queued_sync.unwrap().sync_id, next);
    // One follow-up at most: a further request joins it.
    given(vec![hubspot(), requested(pending), follow_up(next)])
        .when(
            C::RequestSync {
                claimed: true,
                sync_id: later,
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect(vec![]);
}

#[test]
fn a_pending_run_that_found_nothing_ends_without_starting_and_its_follow_up_takes_its_place() {
    let (pending, next) = (SyncId::new(), SyncId::new());
    let state = given(vec![hubspot(), requested(pending), follow_up(next)])
        .when(
            C::CompleteSync {
                sync_id: pending,
                duration_ms: 12,
                unrecorded: counts(80, 0),
                detail: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncCompleted(SyncCompleted {
            sync_id: pending,
            totals: counts(80, 0),
            duration_ms: 12,
            detail: None,
        })]);
    assert!(state.running_sync.is_none());
    assert_eq!(state.pending_sync.unwrap().sync_id, next);
    assert!(state.queued_sync.is_none());
    assert!(state.last_changed_at.is_none(), "nothing changed");
    assert_eq!(state.last_sync.unwrap().sync_id, pending);
}

#[test]
fn a_follow_up_becomes_pending_once_the_run_ahead_of_it_starts() {
    let (pending, next) = (SyncId::new(), SyncId::new());
    let state = given(vec![hubspot(), requested(pending), follow_up(next)])
        .when(
            C::StartSync {
                sync_id: pending,
                cursor: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncStarted(SyncStarted {
            sync_id: pending,
            cursor: None,
        })]);
    assert_eq!(state.running_sync.unwrap().sync_id, pending);
    assert_eq!(state.pending_sync.unwrap().sync_id, next);
    assert!(state.queued_sync.is_none());
}

#[test]
fn a_run_that_changed_records_is_when_the_integration_last_changed() {
    let sync_id = SyncId::new();
    let state = given(vec![hubspot(), requested(sync_id)])
        .when(
            C::CompleteSync {
                sync_id,
                duration_ms: 5,
                unrecorded: counts(3, 1),
                detail: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncCompleted(SyncCompleted {
            sync_id,
            totals: counts(3, 1),
            duration_ms: 5,
            detail: None,
        })]);
    assert!(state.last_changed_at.is_some());
}

#[test]
fn a_run_goes_from_request_to_completion_with_summed_totals() {
    let sync_id = SyncId::new();
    let state = given(vec![hubspot(), requested(sync_id)])
        .when(
            C::StartSync {
                sync_id,
                cursor: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncStarted(SyncStarted {
            sync_id,
            cursor: None,
        })]);
    assert_eq!(state.running_sync.as_ref().unwrap().sync_id, sync_id);
    assert!(state.pending_sync.is_none());

    let page = |n: u32| {
        with_meta(E::SyncProgressed(SyncProgressed {
            sync_id,
            object: "contacts".into(),
            page: n,
            counts: counts(100, 60),
            cursor: Some(format!("after-{n}")),
        }))
    };
    let history = vec![
        hubspot(),
        requested(sync_id),
        started(sync_id),
        page(1),
        page(2),
    ];
    assert_eq!(
        given(history.clone())
            .state()
            .running_sync
            .as_ref()
            .unwrap()
            .cursor
            .as_deref(),
        Some("after-2")
    );
    let state = given(history)
        .when(
            C::CompleteSync {
                sync_id,
                duration_ms: 1200,
                unrecorded: Default::default(),
                detail: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncCompleted(SyncCompleted {
            sync_id,
            totals: counts(200, 120),
            duration_ms: 1200,
            detail: None,
        })]);
    assert!(state.running_sync.is_none());
    assert_eq!(state.last_sync.unwrap().outcome, SyncOutcome::Completed);
}

#[test]
fn progress_is_recorded_only_for_the_running_sync() {
    let sync_id = SyncId::new();
    given(vec![hubspot(), requested(sync_id), started(sync_id)])
        .when(
            C::RecordSyncProgress {
                sync_id,
                object: "contacts".into(),
                page: 1,
                counts: counts(5, 5),
                cursor: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncProgressed(SyncProgressed {
            sync_id,
            object: "contacts".into(),
            page: 1,
            counts: counts(5, 5),
            cursor: None,
        })]);
    let other = SyncId::new();
    given(vec![hubspot(), requested(sync_id), started(sync_id)])
        .when(
            C::RecordSyncProgress {
                sync_id: other,
                object: "contacts".into(),
                page: 1,
                counts: counts(5, 5),
                cursor: None,
            },
            &system(),
        )
        .then_expect_error(DomainError::SyncNotRunning(other));
}

#[test]
fn a_sync_id_is_never_reused() {
    let sync_id = SyncId::new();
    given(vec![hubspot(), requested(sync_id), started(sync_id)])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id,
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect_error(DomainError::SyncIdReused(sync_id));
}

#[test]
fn a_sync_starts_only_when_requested_and_not_twice() {
    let sync_id = SyncId::new();
    given(vec![hubspot()])
        .when(
            C::StartSync {
                sync_id,
                cursor: None,
            },
            &system(),
        )
        .then_expect_error(DomainError::SyncNotRequested(sync_id));
    let next = SyncId::new();
    given(vec![
        hubspot(),
        requested(sync_id),
        started(sync_id),
        requested(next),
    ])
    .when(
        C::StartSync {
            sync_id: next,
            cursor: None,
        },
        &system(),
    )
    .then_expect_error(DomainError::SyncAlreadyRunning);
}

#[test]
fn a_failed_sync_keeps_its_totals_so_far() {
    let sync_id = SyncId::new();
    let page = with_meta(E::SyncProgressed(SyncProgressed {
        sync_id,
        object: "contacts".into(),
        page: 1,
        counts: counts(7, 3),
        cursor: None,
    }));
    let state = given(vec![hubspot(), requested(sync_id), started(sync_id), page])
        .when(
            C::FailSync {
                sync_id,
                code: "provider_5xx".into(),
                message: "502".into(),
                retryable: true,
                unrecorded: Default::default(),
                detail: None,
            },
            &system(),
        )
        .then_expect(vec![E::SyncFailed(SyncFailed {
            sync_id,
            code: "provider_5xx".into(),
            message: "502".into(),
            retryable: true,
            totals: counts(7, 3),
            detail: None,
        })]);
    assert_eq!(
        state.last_sync.unwrap().outcome,
        SyncOutcome::Failed {
            code: "provider_5xx".into(),
            retryable: true
        }
    );
}

// ---- mappings and schedule -----------------------------------------------------------------

fn pair(provider: &str, harmony: &str) -> FieldMapping {
    FieldMapping {
        provider_field: provider.into(),
        harmony_field: harmony.into(),
        transform: None,
    }
}

#[test]
fn mappings_onto_existing_fields_are_versioned() {
    let fields = vec![
        pair("email", "email"),
        FieldMapping {
            transform: Some(Transform::Trim),
            ..pair("firstname", "first_name")
        },
    ];
    let state = given(vec![hubspot()])
        .when(
            C::ChangeMapping {
                object: "contacts".into(),
                fields: fields.clone(),
                discovered_fields: None,
                expected_version: None,
            },
            &admin(),
        )
        .then_expect(vec![E::MappingChanged(MappingChanged {
            object: "contacts".into(),
            version: 1,
            fields: fields.clone(),
        })]);
    assert_eq!(state.mapping_version, 1);
    let companies = vec![pair("name", "name")];
    let next = Given::<Integration>::events(vec![
        hubspot(),
        with_meta(E::MappingChanged(MappingChanged {
            object: "contacts".into(),
            version: 1,
            fields,
        })),
    ])
    .when(
        C::ChangeMapping {
            object: "companies".into(),
            fields: companies.clone(),
            discovered_fields: None,
            expected_version: None,
        },
        &admin(),
    )
    .then_expect(vec![E::MappingChanged(MappingChanged {
        object: "companies".into(),
        version: 2,
        fields: companies,
    })]);
    assert_eq!(next.mappings.len(), 2);
}

#[test]
fn a_mapping_only_uses_fields_the_provider_has() {
    let error = given(vec![hubspot()])
        .when(
            C::ChangeMapping {
                object: "contacts".into(),
                fields: vec![pair("shoe_size", "title")],
                discovered_fields: None,
                expected_version: None,
            },
            &admin(),
        )
        .result()
        .unwrap_err();
    assert!(
        matches!(error, DomainError::InvalidMapping { ref field, .. } if field == "shoe_size"),
        "{error:?}"
    );
    // A custom field the adapter discovered at the provider is fine.
    let discovered = Some(vec!["email".to_owned(), "shoe_size".to_owned()]);
    assert!(given(vec![hubspot()])
        .when(
            C::ChangeMapping {
                object: "contacts".into(),
                fields: vec![pair("shoe_size", "title")],
                discovered_fields: discovered,
                expected_version: None,
            },
            &admin()
        )
        .result()
        .is_ok());
}

#[test]
fn a_mapping_only_targets_harmony_fields_once_each() {
    let error = given(vec![hubspot()])
        .when(
            C::ChangeMapping {
                object: "contacts".into(),
                fields: vec![pair("email", "favourite_colour")],
                discovered_fields: None,
                expected_version: None,
            },
            &admin(),
        )
        .result()
        .unwrap_err();
    assert!(
        matches!(error, DomainError::InvalidMapping { ref field, .. } if field == "favourite_colour")
    );
    let error = given(vec![hubspot()])
        .when(
            C::ChangeMapping {
                object: "contacts".into(),
                fields: vec![pair("email", "email"), pair("phone", "email")],
                discovered_fields: None,
                expected_version: None,
            },
            &admin(),
        )
        .result()
        .unwrap_err();
    assert_eq!(
        error,
        DomainError::InvalidMapping {
            field: "email".into(),
            reason: "is mapped twice".into()
        }
    );
}

#[test]
fn mappings_exist_only_for_apps_that_support_them() {
    given(vec![connected(
        "zendesk",
        Scope::Workspace,
        &[("subdomain", "acme"), ("email", "a@acme.com")],
    )])
    .when(
        C::ChangeMapping {
            object: "tickets".into(),
            fields: vec![pair("subject", "title")],
            discovered_fields: None,
            expected_version: None,
        },
        &admin(),
    )
    .then_expect_error(DomainError::Unsupported {
        app: "Zendesk".into(),
        capability: "field mappings",
    });
    given(vec![hubspot()])
        .when(
            C::ChangeMapping {
                object: "deals".into(),
                fields: vec![pair("amount", "name")],
                discovered_fields: None,
                expected_version: None,
            },
            &admin(),
        )
        .then_expect_error(DomainError::UnknownObject {
            app: "HubSpot".into(),
            object: "deals".into(),
        });
}

#[test]
fn an_unchanged_mapping_records_nothing() {
    let fields = vec![pair("email", "email")];
    given(vec![
        hubspot(),
        with_meta(E::MappingChanged(MappingChanged {
            object: "contacts".into(),
            version: 1,
            fields: fields.clone(),
        })),
    ])
    .when(
        C::ChangeMapping {
            object: "contacts".into(),
            fields,
            discovered_fields: None,
            expected_version: None,
        },
        &admin(),
    )
    .then_expect(vec![]);
}

#[test]
fn the_sync_schedule_stays_within_bounds() {
    let state = given(vec![hubspot()])
        .when(
            C::ChangeSyncSchedule {
                every_minutes: Some(60),
            },
            &admin(),
        )
        .then_expect(vec![E::SyncScheduleChanged(SyncScheduleChanged {
            every_minutes: Some(60),
        })]);
    assert_eq!(state.schedule_minutes, Some(60));
    given(vec![hubspot()])
        .when(
            C::ChangeSyncSchedule {
                every_minutes: Some(1),
            },
            &admin(),
        )
        .then_expect_error(DomainError::InvalidSchedule {
            min: 5,
            max: 1440,
            got: 1,
        });
    let on = with_meta(E::SyncScheduleChanged(SyncScheduleChanged {
        every_minutes: Some(60),
    }));
    given(vec![hubspot(), on.clone()])
        .when(
            C::ChangeSyncSchedule {
                every_minutes: Some(60),
            },
            &admin(),
        )
        .then_expect(vec![]);
    given(vec![hubspot(), on])
        .when(
            C::ChangeSyncSchedule {
                every_minutes: None,
            },
            &admin(),
        )
        .then_expect(vec![E::SyncScheduleChanged(SyncScheduleChanged {
            every_minutes: None,
        })]);
}

// ---- Companion actions ---------------------------------------------------------------------

fn twilio() -> (E, domain::Metadata) {
    connected(
        "twilio",
        Scope::Workspace,
        &[
            ("account_sid", "AC0123456789abcdef0123456789abcdef"),
            ("region", "us1"),
        ],
    )
}

fn sms(action_id: ActionId) -> C {
    C::RequestAction {
        action_id,
        tool: "send_sms".into(),
        arguments: domain::integration::ActionPayload::Plain(
            json!({"to": "+15550100", "body": "hi"}),
        ),
        auto_approval: None,
    }
}

fn sms_requested(action_id: ActionId) -> (E, domain::Metadata) {
    with_meta(E::ActionRequested(ActionRequested {
        action_id,
        tool: "send_sms".into(),
        arguments: domain::integration::ActionPayload::Plain(
            json!({"to": "+15550100", "body": "hi"}),
        ),
        sensitive: true,
        requested_by: user("max"),
    }))
}

#[test]
fn an_insensitive_action_is_approved_at_once() {
    let action_id = ActionId::new();
    given(vec![twilio()])
        .when(
            C::RequestAction {
                action_id,
                tool: "list_calls".into(),
                arguments: domain::integration::ActionPayload::Plain(json!({})),
                auto_approval: None,
            },
            &member(),
        )
        .then_expect(vec![
            E::ActionRequested(ActionRequested {
                action_id,
                tool: "list_calls".into(),
                arguments: domain::integration::ActionPayload::Plain(json!({})),
                sensitive: false,
                requested_by: user("max"),
            }),
            E::ActionApproved(ActionApproved {
                action_id,
                by: Approver::NotSensitive,
                reason: None,
            }),
        ]);
}

#[test]
fn a_sensitive_action_waits_for_confirmation() {
    let action_id = ActionId::new();
    let state = given(vec![twilio()])
        .when(sms(action_id), &member())
        .then_expect(vec![sms_requested(action_id).0]);
    assert_eq!(
        state.open_actions[&action_id].status,
        ActionStatus::AwaitingApproval
    );
}

#[test]
fn an_auto_approval_rule_lets_a_sensitive_action_through() {
    let (action_id, rule_id) = (ActionId::new(), RuleId::new());
    let C::RequestAction {
        tool, arguments, ..
    } = sms(action_id)
    else {
        unreachable!()
    };
    given(vec![twilio()])
        .when(
            C::RequestAction {
                action_id,
                tool,
                arguments,
                auto_approval: Some(rule_id),
            },
            &member(),
        )
        .then_expect(vec![
            sms_requested(action_id).0,
            E::ActionApproved(ActionApproved {
                action_id,
                by: Approver::Rule { rule_id },
                reason: None,
            }),
        ]);
}

#[test]
fn workspace_actions_are_approved_by_admins_and_managers_only() {
    let action_id = ActionId::new();
    given(vec![twilio(), sms_requested(action_id)])
        .when(
            C::ApproveAction {
                action_id,
                reason: Some("ok".into()),
            },
            &manager(),
        )
        .then_expect(vec![E::ActionApproved(ActionApproved {
            action_id,
            by: Approver::User { user: user("mia") },
            reason: Some("ok".into()),
        })]);
    let error = given(vec![twilio(), sms_requested(action_id)])
        .when(
            C::ApproveAction {
                action_id,
                reason: None,
            },
            &member(),
        )
        .result()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden);
}

#[test]
fn personal_actions_are_approved_by_their_owner_only() {
    let action_id = ActionId::new();
    let requested = with_meta(E::ActionRequested(ActionRequested {
        action_id,
        tool: "delete_event".into(),
        arguments: domain::integration::ActionPayload::Plain(json!({"id": "e1"})),
        sensitive: true,
        requested_by: user("max"),
    }));
    assert!(given(vec![gcal_of("max"), requested.clone()])
        .when(
            C::ApproveAction {
                action_id,
                reason: None
            },
            &member()
        )
        .result()
        .is_ok());
    given(vec![gcal_of("max"), requested])
        .when(
            C::ApproveAction {
                action_id,
                reason: None,
            },
            &admin(),
        )
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn a_rejected_action_is_closed() {
    let action_id = ActionId::new();
    let state = given(vec![twilio(), sms_requested(action_id)])
        .when(
            C::RejectAction {
                action_id,
                reason: Some("wrong number".into()),
            },
            &admin(),
        )
        .then_expect(vec![E::ActionRejected(ActionRejected {
            action_id,
            by: user("ada"),
            reason: Some("wrong number".into()),
        })]);
    assert!(state.open_actions.is_empty());
    let rejected = with_meta(E::ActionRejected(ActionRejected {
        action_id,
        by: user("ada"),
        reason: None,
    }));
    given(vec![twilio(), sms_requested(action_id), rejected])
        .when(
            C::ApproveAction {
                action_id,
                reason: None,
            },
            &admin(),
        )
        .then_expect_error(DomainError::UnknownAction(action_id));
}

#[test]
fn only_an_approved_action_is_pushed_and_finished() {
    let action_id = ActionId::new();
    let error = given(vec![twilio(), sms_requested(action_id)])
        .when(
            C::CompleteAction {
                action_id,
                result: domain::integration::ActionPayload::Plain(json!({"sid": "SM1"})),
            },
            &system(),
        )
        .result()
        .unwrap_err();
    assert_eq!(error.code(), "action_state");
    let approved = with_meta(E::ActionApproved(ActionApproved {
        action_id,
        by: Approver::User { user: user("ada") },
        reason: None,
    }));
    given(vec![twilio(), sms_requested(action_id), approved.clone()])
        .when(
            C::CompleteAction {
                action_id,
                result: domain::integration::ActionPayload::Plain(json!({"sid": "SM1"})),
            },
            &system(),
        )
        .then_expect(vec![E::ActionCompleted(ActionCompleted {
            action_id,
            result: domain::integration::ActionPayload::Plain(json!({"sid": "SM1"})),
        })]);
    given(vec![twilio(), sms_requested(action_id), approved])
        .when(
            C::FailAction {
                action_id,
                error: "429".into(),
                retryable: true,
            },
            &system(),
        )
        .then_expect(vec![E::ActionFailed(ActionFailed {
            action_id,
            error: "429".into(),
            retryable: true,
        })]);
}

#[test]
fn an_action_names_a_tool_of_the_app_with_object_arguments() {
    let action_id = ActionId::new();
    given(vec![twilio()])
        .when(
            C::RequestAction {
                action_id,
                tool: "launch_rocket".into(),
                arguments: domain::integration::ActionPayload::Plain(json!({})),
                auto_approval: None,
            },
            &member(),
        )
        .then_expect_error(DomainError::UnknownTool {
            app: "Twilio".into(),
            tool: "launch_rocket".into(),
        });
    given(vec![twilio()])
        .when(
            C::RequestAction {
                action_id,
                tool: "send_sms".into(),
                arguments: domain::integration::ActionPayload::Plain(json!("hi")),
                auto_approval: None,
            },
            &member(),
        )
        .then_expect_error(DomainError::InvalidArguments);
}

#[test]
fn no_action_while_reauth_is_needed_or_disconnected() {
    given(vec![twilio(), expired()])
        .when(sms(ActionId::new()), &member())
        .then_expect_error(DomainError::NeedsReauth);
    given(vec![twilio(), disconnected()])
        .when(sms(ActionId::new()), &member())
        .then_expect_error(DomainError::Disconnected);
}

// ---- disconnect and delete -----------------------------------------------------------------

#[test]
fn disconnect_stops_syncs_and_actions_and_removes_the_configuration_but_keeps_history() {
    let (running, action_id) = (SyncId::new(), ActionId::new());
    let sf = connected(
        "salesforce",
        Scope::Workspace,
        &[("instance_url", "https://acme.my.salesforce.com")],
    );
    let schedule = with_meta(E::SyncScheduleChanged(SyncScheduleChanged {
        every_minutes: Some(30),
    }));
    let action = with_meta(E::ActionRequested(ActionRequested {
        action_id,
        tool: "update_opportunity".into(),
        arguments: domain::integration::ActionPayload::Plain(json!({})),
        sensitive: true,
        requested_by: user("ada"),
    }));
    let mapping = with_meta(E::MappingChanged(MappingChanged {
        object: "Contact".into(),
        version: 1,
        fields: vec![pair("Email", "email")],
    }));
    let state = given(vec![
        sf,
        schedule,
        mapping,
        requested(running),
        started(running),
        action,
    ])
    .when(
        C::Disconnect {
            reason: "no longer used".into(),
            token_revoked: true,
        },
        &admin(),
    )
    .then_expect(vec![
        E::SyncFailed(SyncFailed {
            sync_id: running,
            code: "cancelled".into(),
            message: "the integration was disconnected".into(),
            retryable: false,
            totals: RecordCounts::default(),
            detail: None,
        }),
        E::ActionFailed(ActionFailed {
            action_id,
            error: "the integration was disconnected".into(),
            retryable: false,
        }),
        E::Disconnected(Disconnected {
            reason: "no longer used".into(),
            token_revoked: true,
        }),
    ]);
    assert_eq!(state.status, Status::Disconnected);
    assert!(state.setup.is_empty(), "setup fields stay after disconnect");
    assert_eq!(state.credential_ref, None);
    assert_eq!(state.schedule_minutes, None, "future syncs are not stopped");
    assert_eq!(
        state.mappings.len(),
        1,
        "history-derived configuration such as mappings stays"
    );
    assert!(state.profile.is_some());
    assert_eq!(state.available_actions(), ["delete"]);
}

#[test]
fn disconnecting_twice_is_refused() {
    given(vec![hubspot(), disconnected()])
        .when(
            C::Disconnect {
                reason: "again".into(),
                token_revoked: false,
            },
            &admin(),
        )
        .then_expect_error(DomainError::Disconnected);
}

#[test]
fn delete_after_disconnect_and_delete_of_a_connected_integration_disconnects_first() {
    let state = given(vec![hubspot(), disconnected()])
        .when(
            C::Delete {
                secrets_shredded: true,
            },
            &admin(),
        )
        .then_expect(vec![E::Deleted(Deleted {
            secrets_shredded: true,
        })]);
    assert_eq!(state.status, Status::Deleted);
    assert!(state.available_actions().is_empty());
    given(vec![hubspot()])
        .when(
            C::Delete {
                secrets_shredded: true,
            },
            &admin(),
        )
        .then_expect(vec![
            E::Disconnected(Disconnected {
                reason: "deleted".into(),
                token_revoked: false,
            }),
            E::Deleted(Deleted {
                secrets_shredded: true,
            }),
        ]);
}

#[test]
fn nothing_happens_to_a_deleted_integration() {
    let deleted = with_meta(E::Deleted(Deleted {
        secrets_shredded: true,
    }));
    given(vec![hubspot(), disconnected(), deleted.clone()])
        .when(
            C::Delete {
                secrets_shredded: true,
            },
            &admin(),
        )
        .then_expect_error(DomainError::Deleted);
    given(vec![hubspot(), disconnected(), deleted])
        .when(
            C::RequestSync {
                claimed: false,
                sync_id: SyncId::new(),
                kind: SyncKind::Full,
            },
            &admin(),
        )
        .then_expect_error(DomainError::Deleted);
}

#[test]
fn available_actions_follow_the_status_and_the_app() {
    assert_eq!(
        given(vec![hubspot()]).state().available_actions(),
        [
            "test",
            "reauth",
            "sync",
            "schedule",
            "mappings",
            "disconnect",
            "delete"
        ]
    );
    let todoist = connected("todoist", Scope::Personal { owner: user("max") }, &[]);
    assert_eq!(
        given(vec![todoist]).state().available_actions(),
        ["test", "reauth", "sync", "schedule", "disconnect", "delete"]
    );
}

// ---- abandoned connects --------------------------------------------------------------------

#[test]
fn an_unfinished_connect_is_closed_by_the_service_only() {
    let abandon = C::Abandon {
        workspace: ws(),
        owner: None,
        app: "hubspot".into(),
        reason: "stale".into(),
    };
    let state = Given::<Integration>::no_events()
        .when(abandon.clone(), &system())
        .then_expect(vec![E::ConnectionAbandoned(ConnectionAbandoned {
            workspace: ws(),
            owner: None,
            app: "hubspot".into(),
            reason: "stale".into(),
        })]);
    assert_eq!(state.status, Status::Abandoned);
    Given::<Integration>::no_events()
        .when(abandon.clone(), &admin())
        .then_expect_error(DomainError::Forbidden(
            "only the service itself records this",
        ));
    given(vec![hubspot()])
        .when(abandon, &system())
        .then_expect_error(DomainError::AlreadyConnected);
    // And the abandoned stream can never be connected.
    given(vec![with_meta(E::ConnectionAbandoned(
        ConnectionAbandoned {
            workspace: ws(),
            owner: None,
            app: "hubspot".into(),
            reason: "x".into(),
        },
    ))])
    .when(
        C::Connect(connect_command("hubspot", AppScope::Workspace, &[])),
        &admin(),
    )
    .then_expect_error(DomainError::AlreadyConnected);
}

#[test]
fn metadata_names_the_workspace_and_the_owner_of_a_personal_integration() {
    let state = given(vec![gcal_of("max")]).state().clone();
    let ctx = member();
    let metadata = domain::Aggregate::metadata_for(
        &state,
        &C::Disconnect {
            reason: "x".into(),
            token_revoked: false,
        },
        &ctx,
    );
    assert_eq!(metadata.owner, Some(user("max")));
    assert_eq!(metadata.workspace, ws());
    assert_eq!(metadata.actor, domain::Actor::User(user("max")));
    let fresh = Integration::default();
    let connect = C::Connect(connect_command("todoist", AppScope::Personal, &[]));
    assert_eq!(
        domain::Aggregate::metadata_for(
            &fresh,
            &connect,
            &as_user(
                "zoe",
                Role::Member {
                    integration_permission: false
                }
            )
        )
        .owner,
        Some(user("zoe"))
    );
}

#[test]
fn a_mapping_change_made_against_an_old_version_is_refused() {
    let history = || {
        given(vec![
            hubspot(),
            with_meta(E::MappingChanged(MappingChanged {
                object: "contacts".into(),
                version: 1,
                fields: vec![pair("email", "email")],
            })),
        ])
    };
    let change = |expected_version| C::ChangeMapping {
        object: "contacts".into(),
        fields: vec![pair("firstname", "first_name")],
        discovered_fields: None,
        expected_version,
    };
    history().when(change(Some(0)), &admin()).then_expect_error(
        DomainError::MappingVersionMismatch {
            expected: 0,
            current: 1,
        },
    );
    assert!(history().when(change(Some(1)), &admin()).result().is_ok());
}
