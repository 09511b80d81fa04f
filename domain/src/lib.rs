//! The pure model of Harmony Sync.
//!
//! This crate holds what an integration *is* and which rules govern it: identifiers, who may
//! act ([`Principal`], [`Actor`]), the app catalog behind Marketplace > Apps and Models, the
//! [`Integration`] aggregate (one per connected app) and the [`WorkspacePolicy`] aggregate (one
//! per workspace: auto-approval rules and the one-connection-per-app reservation), their
//! commands, and their versioned events with upcasters.
//!
//! It is deliberately free of I/O: no clock reads inside rules (the caller passes the time in a
//! [`CommandContext`]), no storage, no async runtime. Storing events is the `eventstore` crate's
//! job; serving them is the gateway's.

pub mod aggregate;
pub mod catalog;
pub mod error;
pub mod event;
pub mod ids;
pub mod integration;
pub mod metadata;
pub mod policy;
pub mod principal;
pub mod testing;
pub mod timestamp;

pub use aggregate::{Aggregate, CommandContext};
pub use error::{DomainError, ErrorKind};
pub use event::{DomainEvent, EventDecodeError};
pub use ids::{
    ActionId, CredentialRef, EventId, IdError, IntegrationId, RuleId, StreamName, SyncId, UserId,
    WorkspaceId,
};
pub use integration::{
    Integration, IntegrationCommand, IntegrationEvent, IntegrationEventKind, Status,
};
pub use metadata::Metadata;
pub use policy::{PolicyCommand, PolicyEvent, PolicyEventKind, WorkspacePolicy};
pub use principal::{Actor, Caller, Principal, Role};
pub use timestamp::Timestamp;
