//! A given / when / then harness for aggregates, in the manner of cqrs-es's `TestFramework`,
//! and the callers and commands tests of every crate start from.
//!
//! ```
//! # use domain::testing::Given;
//! # use domain::{Integration, IntegrationCommand, DomainError};
//! # fn demo(ctx: domain::CommandContext) {
//! Given::<Integration>::no_events()
//!     .when(IntegrationCommand::Delete { secrets_shredded: true }, &ctx)
//!     .then_expect_error(DomainError::NotFound);
//! # }
//! ```

use crate::aggregate::{Aggregate, CommandContext};
use crate::catalog::AppScope;
use crate::error::DomainError;
use crate::ids::{CredentialRef, IntegrationId};
use crate::integration::ConnectIntegration;
use crate::metadata::Metadata;
use crate::principal::{Caller, Principal, Role};
use crate::timestamp::Timestamp;

/// `name` of workspace `acme` with `role`, now: the caller most tests act as.
///
/// # Panics
/// When `name` is not a valid user id (a test's own mistake).
#[allow(clippy::expect_used)]
pub fn as_user(name: &str, role: Role) -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: name.parse().expect("a test names a valid user"),
            workspace: "acme".parse().expect("acme is a valid workspace id"),
            role,
        }),
        Timestamp::now(),
    )
}

/// A connect of `app` in `scope` with `setup`, a fresh integration id and a test credential
/// reference.
pub fn connect_command(app: &str, scope: AppScope, setup: &[(&str, &str)]) -> ConnectIntegration {
    ConnectIntegration {
        integration: IntegrationId::new(),
        app: app.into(),
        scope,
        setup: setup
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        granted_scopes: vec!["crm.objects.contacts.read".into()],
        account_label: Some("sales@acme.com".into()),
        credential_ref: CredentialRef("vault:test:1".into()),
        token_expires_at: None,
    }
}

/// The history an aggregate starts from, each event with the metadata it was recorded with.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    pub fn no_events() -> Self {
        Self {
            state: A::default(),
        }
    }

    pub fn events(events: impl IntoIterator<Item = (A::Event, Metadata)>) -> Self {
        let mut state = A::default();
        for (event, metadata) in events {
            state.apply(&event, &metadata);
        }
        Self { state }
    }

    pub fn state(&self) -> &A {
        &self.state
    }

    pub fn when(self, command: A::Command, context: &CommandContext) -> Then<A> {
        let result = self.state.handle(&command, context);
        // As in the repository, metadata exists only for events that were produced.
        let metadata = match &result {
            Ok(events) if !events.is_empty() => Some(self.state.metadata_for(&command, context)),
            _ => None,
        };
        Then {
            state: self.state,
            result,
            metadata,
        }
    }
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, DomainError>,
    metadata: Option<Metadata>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the exact events, and returns the state after applying them.
    pub fn then_expect(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                if let Some(metadata) = &self.metadata {
                    for event in &events {
                        state.apply(event, metadata);
                    }
                }
                state
            }
            Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
        }
    }

    pub fn then_expect_error(self, expected: DomainError) {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
            Err(error) => assert_eq!(error, expected),
        }
    }

    /// Asserts a refusal of this kind (forbidden, not found …), whatever its wording.
    pub fn then_expect_error_kind(self, expected: crate::ErrorKind) {
        match self.result {
            Ok(events) => panic!("expected a {expected:?} error, got events {events:?}"),
            Err(error) => assert_eq!(error.kind(), expected, "{error:?}"),
        }
    }

    /// The raw outcome, for assertions on part of it.
    pub fn result(self) -> Result<Vec<A::Event>, DomainError> {
        self.result
    }
}
