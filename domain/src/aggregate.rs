//! The aggregate contract shared by `Integration` and `WorkspacePolicy`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::error::DomainError;
use crate::event::DomainEvent;
use crate::metadata::Metadata;
use crate::principal::Caller;
use crate::timestamp::Timestamp;

/// What surrounds a command: who sent it, when, and what it answers.
#[derive(Clone, Debug)]
pub struct CommandContext {
    pub caller: Caller,
    /// The time the command is decided at; rules never read a clock themselves.
    pub now: Timestamp,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl CommandContext {
    pub fn new(caller: Caller, now: Timestamp) -> Self {
        Self {
            caller,
            now,
            correlation_id: Uuid::now_v7(),
            causation_id: None,
        }
    }
}

/// A consistency boundary: state folded from its own stream, deciding commands into events.
pub trait Aggregate:
    Default + Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned
{
    type Command;
    type Event: DomainEvent;

    /// Bumped whenever the state's serialized shape changes, so stale snapshots are ignored.
    const SNAPSHOT_SCHEMA: u32;

    /// Decides a command against the current state. An empty vector means "nothing to do"
    /// (e.g. a sync request coalesced into one already pending).
    fn handle(
        &self,
        command: &Self::Command,
        context: &CommandContext,
    ) -> Result<Vec<Self::Event>, DomainError>;

    /// Folds one event into the state. Never fails: events are facts.
    fn apply(&mut self, event: &Self::Event, metadata: &Metadata);

    /// The metadata for the events `command` has just produced on this state. The command is
    /// given because on a new stream it is what names the workspace and the owner.
    fn metadata_for(&self, command: &Self::Command, context: &CommandContext) -> Metadata;
}
