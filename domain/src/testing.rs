//! A given / when / then harness for aggregates, in the manner of cqrs-es's `TestFramework`.
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
use crate::error::DomainError;
use crate::metadata::Metadata;

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
