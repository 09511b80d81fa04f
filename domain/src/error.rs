//! The rules a command can break, each with a stable code.

use crate::ids::{ActionId, IntegrationId, SyncId};

/// How the caller should read an error: these map to different HTTP statuses at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The thing does not exist for this caller (or must not be revealed to them): 404.
    NotFound,
    /// The caller is known but not allowed: 403.
    Forbidden,
    /// The request contradicts the current state (already connected, slot taken …): 409.
    Conflict,
    /// The request itself is invalid (bad field, unknown tool …): 422.
    Invalid,
}

/// A rule of DESIGN.md that a command broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("integration not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("unknown app `{0}`")]
    UnknownApp(String),
    #[error("{app} is a {expected} integration and cannot be connected as {requested}")]
    ScopeMismatch {
        app: String,
        expected: &'static str,
        requested: &'static str,
    },
    #[error("setup field `{field}`: {reason}")]
    InvalidSetup { field: String, reason: String },
    #[error("this integration is already connected")]
    AlreadyConnected,
    #[error("{app} is already connected here (integration {holder}); disconnect it first")]
    SlotTaken { app: String, holder: IntegrationId },
    #[error("the integration is disconnected")]
    Disconnected,
    #[error("the integration was deleted")]
    Deleted,
    #[error("the integration needs re-authentication before it can do that")]
    NeedsReauth,
    #[error("{app} does not support {capability}")]
    Unsupported {
        app: String,
        capability: &'static str,
    },
    #[error("sync {0} is not running")]
    SyncNotRunning(SyncId),
    #[error("sync {0} was not requested")]
    SyncNotRequested(SyncId),
    #[error("a sync is already running")]
    SyncAlreadyRunning,
    #[error("sync id {0} is already in use")]
    SyncIdReused(SyncId),
    #[error("{app} has no object `{object}` to map")]
    UnknownObject { app: String, object: String },
    #[error("mapping field `{field}`: {reason}")]
    InvalidMapping { field: String, reason: String },
    #[error("the mappings are at version {current}, not {expected}: read them again and retry")]
    MappingVersionMismatch { expected: u32, current: u32 },
    #[error("sync frequency must be between {min} and {max} minutes, got {got}")]
    InvalidSchedule { min: u32, max: u32, got: u32 },
    #[error("{app} has no Companion tool `{tool}`")]
    UnknownTool { app: String, tool: String },
    #[error("action arguments must be a JSON object")]
    InvalidArguments,
    #[error("action {0} not found")]
    UnknownAction(ActionId),
    #[error("action {action} is {state}, not {expected}")]
    ActionState {
        action: ActionId,
        state: &'static str,
        expected: &'static str,
    },
    #[error(
        "auto-approval rules are for sensitive tools; `{0}` runs without confirmation already"
    )]
    RuleForInsensitiveTool(String),
    #[error("approval rule not found")]
    UnknownRule,
}

impl DomainError {
    /// A stable machine-readable code, e.g. for problem+json bodies.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::NotFound => "not_found",
            DomainError::Forbidden(_) => "forbidden",
            DomainError::UnknownApp(_) => "unknown_app",
            DomainError::ScopeMismatch { .. } => "scope_mismatch",
            DomainError::InvalidSetup { .. } => "invalid_setup",
            DomainError::AlreadyConnected => "already_connected",
            DomainError::SlotTaken { .. } => "app_already_connected",
            DomainError::Disconnected => "disconnected",
            DomainError::Deleted => "deleted",
            DomainError::NeedsReauth => "needs_reauth",
            DomainError::Unsupported { .. } => "unsupported",
            DomainError::SyncNotRunning(_) => "sync_not_running",
            DomainError::SyncNotRequested(_) => "sync_not_requested",
            DomainError::SyncAlreadyRunning => "sync_already_running",
            DomainError::SyncIdReused(_) => "sync_id_reused",
            DomainError::UnknownObject { .. } => "unknown_object",
            DomainError::InvalidMapping { .. } => "invalid_mapping",
            DomainError::MappingVersionMismatch { .. } => "mapping_version",
            DomainError::InvalidSchedule { .. } => "invalid_schedule",
            DomainError::UnknownTool { .. } => "unknown_tool",
            DomainError::InvalidArguments => "invalid_arguments",
            DomainError::UnknownAction(_) => "unknown_action",
            DomainError::ActionState { .. } => "action_state",
            DomainError::RuleForInsensitiveTool(_) => "rule_for_insensitive_tool",
            DomainError::UnknownRule => "unknown_rule",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            DomainError::NotFound
            | DomainError::UnknownAction(_)
            | DomainError::UnknownRule
            | DomainError::UnknownApp(_) => ErrorKind::NotFound,
            DomainError::Forbidden(_) => ErrorKind::Forbidden,
            DomainError::AlreadyConnected
            | DomainError::SlotTaken { .. }
            | DomainError::Disconnected
            | DomainError::Deleted
            | DomainError::NeedsReauth
            | DomainError::SyncNotRunning(_)
            | DomainError::SyncNotRequested(_)
            | DomainError::SyncAlreadyRunning
            | DomainError::SyncIdReused(_)
            | DomainError::ActionState { .. }
            | DomainError::MappingVersionMismatch { .. } => ErrorKind::Conflict,
            DomainError::ScopeMismatch { .. }
            | DomainError::InvalidSetup { .. }
            | DomainError::Unsupported { .. }
            | DomainError::UnknownObject { .. }
            | DomainError::InvalidMapping { .. }
            | DomainError::InvalidSchedule { .. }
            | DomainError::UnknownTool { .. }
            | DomainError::InvalidArguments
            | DomainError::RuleForInsensitiveTool(_) => ErrorKind::Invalid,
        }
    }
}
