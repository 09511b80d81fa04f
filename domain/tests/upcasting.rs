//! Stored events of older schemas load in today's shape.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use domain::integration::{ConnectionTested, IntegrationConnected, Scope};
use domain::{DomainEvent, EventDecodeError, IntegrationEvent};
use serde_json::json;

#[test]
fn a_schema_1_connect_written_as_raw_json_loads_as_schema_2() {
    // As the first release wrote it: scopes as one space-separated string.
    let raw = r#"{
        "integration": "0192f1c4-6a8e-7cc1-9a4e-3c1d2b7e9f10",
        "workspace": "acme",
        "app": "hubspot",
        "scope": {"kind": "workspace"},
        "setup": {},
        "scopes": "oauth crm.objects.contacts.read",
        "account_label": "sales@acme.com",
        "credential_ref": "vault:0192f1c4:1",
        "token_expires_at": "2026-01-01T00:00:00.000000Z"
    }"#;
    let data: serde_json::Value = serde_json::from_str(raw).unwrap();
    let event = IntegrationEvent::decode("IntegrationConnected", 1, data)
        .unwrap()
        .unwrap();
    let IntegrationEvent::IntegrationConnected(IntegrationConnected {
        granted_scopes,
        scope,
        app,
        ..
    }) = &event
    else {
        panic!("{event:?}")
    };
    assert_eq!(granted_scopes, &["oauth", "crm.objects.contacts.read"]);
    assert_eq!(scope, &Scope::Workspace);
    assert_eq!(app, "hubspot");
    assert_eq!(
        event.schema(),
        2,
        "events are always re-encoded in the current schema"
    );
    assert!(event.to_data().get("scopes").is_none());
}

#[test]
fn a_schema_1_connection_test_loads_with_whole_milliseconds() {
    let data = json!({"success": true, "latency_secs": 0.2346, "message": "portal 42"});
    let event = IntegrationEvent::decode("ConnectionTested", 1, data)
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        IntegrationEvent::ConnectionTested(ConnectionTested {
            ok: true,
            latency_ms: 235,
            answer: "portal 42".into()
        })
    );
}

#[test]
fn current_events_round_trip_and_unknown_or_future_ones_are_told_apart() {
    let event = IntegrationEvent::ConnectionTested(ConnectionTested {
        ok: false,
        latency_ms: 9,
        answer: "401".into(),
    });
    let decoded =
        IntegrationEvent::decode(event.event_type(), event.schema(), event.to_data()).unwrap();
    assert_eq!(decoded, Some(event));
    assert_eq!(
        IntegrationEvent::decode("SomethingNew", 1, json!({})).unwrap(),
        None
    );
    assert!(matches!(
        IntegrationEvent::decode("ConnectionTested", 3, json!({})),
        Err(EventDecodeError::FutureSchema {
            schema: 3,
            known: 2,
            ..
        })
    ));
    assert!(matches!(
        IntegrationEvent::decode("Deleted", 1, json!({"nope": 1})),
        Err(EventDecodeError::Malformed { .. })
    ));
}

/// Readers that only route events by type match on a kind from the domain, never on a name
/// they spell themselves: each kind is exactly its published name.
#[test]
fn every_event_kind_is_its_published_name_and_nothing_else() {
    use domain::{IntegrationEventKind, PolicyEventKind};
    let decoded = IntegrationEvent::decode(
        "ConnectionTested",
        1,
        json!({"success": true, "latency_secs": 0.25, "message": "fine"}),
    )
    .unwrap()
    .unwrap();
    assert_eq!(decoded.kind(), IntegrationEventKind::ConnectionTested);
    assert_eq!(
        IntegrationEventKind::of(decoded.event_type()),
        Some(decoded.kind())
    );
    for kind in [
        IntegrationEventKind::SyncRequested,
        IntegrationEventKind::ActionApproved,
        IntegrationEventKind::Deleted,
    ] {
        assert_eq!(IntegrationEventKind::of(kind.name()), Some(kind));
    }
    assert_eq!(
        PolicyEventKind::of("ApprovalRuleAdded"),
        Some(PolicyEventKind::ApprovalRuleAdded)
    );
    for stranger in ["syncrequested", "Sync", "ApprovalRuleAdded", ""] {
        assert_eq!(IntegrationEventKind::of(stranger), None, "{stranger}");
    }
}
