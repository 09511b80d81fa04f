//! Shared fixtures for the domain's given/when/then tests.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

use std::collections::BTreeMap;

use domain::integration::{IntegrationConnected, Scope};
#[allow(unused_imports)]
pub use domain::testing::{as_user, connect_command};
use domain::{
    Actor, Caller, CommandContext, CredentialRef, IntegrationEvent, IntegrationId, Metadata,
    Principal, Role, Timestamp, UserId, WorkspaceId,
};

pub fn ws() -> WorkspaceId {
    "acme".parse().unwrap()
}

pub fn user(name: &str) -> UserId {
    name.parse().unwrap()
}

pub fn admin() -> CommandContext {
    as_user("ada", Role::Admin)
}

pub fn manager() -> CommandContext {
    as_user(
        "mia",
        Role::Member {
            integration_permission: true,
        },
    )
}

pub fn member() -> CommandContext {
    as_user(
        "max",
        Role::Member {
            integration_permission: false,
        },
    )
}

pub fn auditor() -> CommandContext {
    as_user("aud", Role::Auditor)
}

pub fn outsider() -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: user("ada"),
            workspace: "globex".parse().unwrap(),
            role: Role::Admin,
        }),
        Timestamp::now(),
    )
}

pub fn system() -> CommandContext {
    CommandContext::new(Caller::system("test worker"), Timestamp::now())
}

pub fn meta() -> Metadata {
    Metadata {
        workspace: ws(),
        owner: None,
        actor: Actor::User(user("ada")),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
        occurred_at: Timestamp::now(),
    }
}

pub fn connected(app: &str, scope: Scope, setup: &[(&str, &str)]) -> (IntegrationEvent, Metadata) {
    let owner = scope.owner().cloned();
    (
        IntegrationEvent::IntegrationConnected(IntegrationConnected {
            integration: IntegrationId::new(),
            workspace: ws(),
            app: app.into(),
            scope,
            setup: setup
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            granted_scopes: vec!["crm.objects.contacts.read".into()],
            account_label: None,
            credential_ref: CredentialRef("vault:test:1".into()),
            token_expires_at: None,
        }),
        Metadata { owner, ..meta() },
    )
}

pub fn hubspot() -> (IntegrationEvent, Metadata) {
    connected("hubspot", Scope::Workspace, &[])
}

pub fn gcal_of(owner: &str) -> (IntegrationEvent, Metadata) {
    connected(
        "google-calendar",
        Scope::Personal { owner: user(owner) },
        &[],
    )
}

pub fn with_meta(event: IntegrationEvent) -> (IntegrationEvent, Metadata) {
    (event, meta())
}
