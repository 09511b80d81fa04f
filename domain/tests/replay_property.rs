//! For any sequence of commands, replaying the accepted events rebuilds exactly the state the
//! aggregate had; the state survives a snapshot round trip, and every event survives encoding.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use common::*;
use domain::catalog::AppScope;
use domain::integration::*;
use domain::{
    ActionId, Aggregate, CommandContext, CredentialRef, DomainEvent, Integration,
    IntegrationCommand as C, IntegrationEvent, Metadata, SyncId,
};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

fn sync_id(i: u8) -> SyncId {
    SyncId(Uuid::from_u128(0x5000 + u128::from(i)))
}

fn action_id(i: u8) -> ActionId {
    ActionId(Uuid::from_u128(0xA000 + u128::from(i)))
}

/// Mostly callers who may act, so that sequences get far; the others still appear.
fn context(i: u8) -> CommandContext {
    match i % 16 {
        0..=4 => admin(),
        5..=9 => system(),
        10 | 11 => member(),
        12 => manager(),
        13 => auditor(),
        14 => as_user(
            "zoe",
            domain::Role::Member {
                integration_permission: false,
            },
        ),
        _ => outsider(),
    }
}

const APPS: [(&str, AppScope); 3] = [
    ("hubspot", AppScope::Workspace),
    ("google-calendar", AppScope::Personal),
    ("twilio", AppScope::Workspace),
];

fn setup_for(app: &str) -> Vec<(&'static str, &'static str)> {
    if app == "twilio" {
        vec![
            ("account_sid", "AC0123456789abcdef0123456789abcdef"),
            ("region", "ie1"),
        ]
    } else {
        vec![]
    }
}

fn command(op: (u8, u8, u8, u8)) -> C {
    let (kind, a, b, c) = op;
    // Credential expiry, disconnect and delete end a sequence's interesting part, so they are drawn less often.
    let kind = match kind % 48 {
        45 => 3,
        46 => 17,
        47 => 18,
        k if k % 17 == 3 => 6,
        k => k % 17,
    };
    match kind {
        0 => {
            let (app, scope) = APPS[usize::from(a) % APPS.len()];
            C::Connect(connect_command(app, scope, &setup_for(app)))
        }
        1 => C::RecordConnectionTest {
            ok: a % 2 == 0,
            latency_ms: u64::from(b),
            answer: format!("answer {c}"),
        },
        2 => C::RecordCredentialsRefresh {
            credential_ref: CredentialRef(format!("vault:x:{a}")),
            expires_at: None,
        },
        3 => C::MarkCredentialsExpired {
            reason: [
                ExpiryReason::Expired,
                ExpiryReason::Revoked,
                ExpiryReason::InvalidGrant,
            ][usize::from(a) % 3],
            detail: "refused".into(),
        },
        4 => C::Reauthenticate {
            credential_ref: CredentialRef(format!("vault:x:r{a}")),
            granted_scopes: vec!["oauth".into()],
            expires_at: None,
        },
        5 => C::RequestSync {
            claimed: false,
            sync_id: sync_id(a % 2),
            kind: if b % 2 == 0 {
                SyncKind::Full
            } else {
                SyncKind::Incremental
            },
        },
        6 => C::StartSync {
            sync_id: sync_id(a % 2),
            cursor: (b % 2 == 0).then(|| format!("c{b}")),
        },
        7 => C::RecordSyncProgress {
            sync_id: sync_id(a % 2),
            object: "contacts".into(),
            page: u32::from(b),
            counts: RecordCounts {
                pulled: u64::from(c),
                created: u64::from(c / 2),
                updated: 1,
                deleted: 0,
            },
            cursor: Some(format!("p{b}")),
        },
        8 => C::CompleteSync {
            sync_id: sync_id(a % 2),
            duration_ms: u64::from(b) * 10,
            unrecorded: Default::default(),
            detail: None,
        },
        9 => C::FailSync {
            sync_id: sync_id(a % 2),
            code: "provider_5xx".into(),
            message: "bad gateway".into(),
            retryable: b % 2 == 0,
            unrecorded: Default::default(),
            detail: None,
        },
        10 => {
            let fields = [
                ("email", "email"),
                ("firstname", "first_name"),
                ("phone", "phone"),
                ("lastname", "last_name"),
            ];
            let take = 1 + usize::from(b) % fields.len();
            C::ChangeMapping {
                object: if a % 3 == 0 {
                    "companies".into()
                } else {
                    "contacts".into()
                },
                fields: fields[..take]
                    .iter()
                    .map(|(p, h)| FieldMapping {
                        provider_field: (*p).into(),
                        harmony_field: (*h).into(),
                        transform: None,
                    })
                    .collect(),
                discovered_fields: None,
                expected_version: None,
            }
        }
        11 => C::ChangeSyncSchedule {
            every_minutes: if a % 4 == 0 {
                None
            } else {
                Some(u32::from(b) * 7)
            },
        },
        12 => {
            let tools = [
                "send_sms",
                "list_calls",
                "update_contact",
                "create_contact",
                "create_event",
                "delete_event",
            ];
            C::RequestAction {
                action_id: action_id(a % 4),
                tool: tools[usize::from(b) % tools.len()].into(),
                arguments: domain::integration::ActionPayload::Plain(json!({"n": c})),
                auto_approval: None,
            }
        }
        13 => C::ApproveAction {
            action_id: action_id(a % 4),
            reason: None,
        },
        14 => C::RejectAction {
            action_id: action_id(a % 4),
            reason: Some("no".into()),
        },
        15 => C::CompleteAction {
            action_id: action_id(a % 4),
            result: domain::integration::ActionPayload::Plain(json!({"ok": true})),
        },
        16 => C::FailAction {
            action_id: action_id(a % 4),
            error: "timeout".into(),
            retryable: true,
        },
        17 => C::Disconnect {
            reason: "done".into(),
            token_revoked: a % 2 == 0,
        },
        _ => C::Delete {
            secrets_shredded: true,
        },
    }
}

/// Sequences start with a connect most of the time, so that the rest has something to act on.
fn ops() -> impl Strategy<Value = Vec<((u8, u8, u8, u8), u8)>> {
    let op = (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>());
    (
        (any::<u8>(), 0u8..2),
        proptest::collection::vec((op, any::<u8>()), 0..200),
    )
        .prop_map(|((app, who), mut rest)| {
            rest.insert(0, ((0, app, 0, 0), who));
            rest
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn replaying_accepted_events_rebuilds_the_state(sequence in ops()) {
        let mut state = Integration::default();
        let mut history: Vec<(IntegrationEvent, Metadata)> = Vec::new();
        for (op, who) in sequence {
            let command = command(op);
            let ctx = context(who);
            if let Ok(events) = state.handle(&command, &ctx) {
                if events.is_empty() {
                    continue;
                }
                let metadata = state.metadata_for(&command, &ctx);
                for event in events {
                    state.apply(&event, &metadata);
                    history.push((event, metadata.clone()));
                }
            }
            // Invariants that hold after every step.
            if let (Some(running), Some(pending)) = (&state.running_sync, &state.pending_sync) {
                prop_assert_ne!(running.sync_id, pending.sync_id);
            }
            if matches!(state.status, Status::Disconnected | Status::Deleted) {
                prop_assert!(state.setup.is_empty() && state.credential_ref.is_none() && state.running_sync.is_none());
            }
        }

        let mut replayed = Integration::default();
        for (event, metadata) in &history {
            // Through the stored form, as a load from the log would do.
            let decoded = IntegrationEvent::decode(event.event_type(), event.schema(), event.to_data()).unwrap().unwrap();
            prop_assert_eq!(&decoded, event);
            replayed.apply(&decoded, metadata);
        }
        prop_assert_eq!(&replayed, &state);

        let snapshot = serde_json::to_vec(&state).unwrap();
        let restored: Integration = serde_json::from_slice(&snapshot).unwrap();
        prop_assert_eq!(restored, state);
    }
}
