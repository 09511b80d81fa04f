//! Identifiers.
//!
//! Integrations, events, syncs, actions and rules are UUID v7 (time-ordered, so an index on them
//! stays append-mostly). Workspaces and users come from the workspace app and are short slugs;
//! they appear in NATS subjects, so they are restricted to characters a subject token allows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is not a valid UUID")]
    NotAUuid(String),
    #[error("`{value}` is not a valid {what}: use 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    NotASlug { what: &'static str, value: String },
    #[error("`ws` is reserved and cannot be a user id")]
    ReservedUser,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered identifier.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self).map_err(|_| IdError::NotAUuid(text.to_owned()))
            }
        }
    };
}

uuid_id!(
    /// One connection of one app, from connect to delete. Reconnecting starts a new one.
    IntegrationId
);
uuid_id!(
    /// An event's identity and its idempotency key in the log.
    EventId
);
uuid_id!(
    /// One sync run, from request to completion or failure.
    SyncId
);
uuid_id!(
    /// One Companion action, from request to completion or failure.
    ActionId
);
uuid_id!(
    /// One auto-approval rule on a workspace policy stream.
    RuleId
);

fn is_slug(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::try_from(text.to_owned())
            }
        }
    };
}

slug_id!(
    /// An organization workspace of the workspace app.
    WorkspaceId,
    "workspace id"
);
slug_id!(
    /// A user of the workspace app.
    UserId,
    "user id"
);

impl TryFrom<String> for WorkspaceId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if is_slug(&value) {
            Ok(Self(value))
        } else {
            Err(IdError::NotASlug {
                what: "workspace id",
                value,
            })
        }
    }
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value == "ws" {
            // `ws` names the workspace as owner in event subjects; a user by that name would
            // read as the workspace.
            return Err(IdError::ReservedUser);
        }
        if is_slug(&value) {
            Ok(Self(value))
        } else {
            Err(IdError::NotASlug {
                what: "user id",
                value,
            })
        }
    }
}

/// A reference to a secret held in the credential vault. Events carry this, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CredentialRef(pub String);

impl fmt::Display for CredentialRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a stream in the event log: `integration-<uuid>` or `workspace-<id>`; in the
/// run-detail log, `run-<sync id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamName(String);

impl StreamName {
    pub fn integration(id: IntegrationId) -> Self {
        Self(format!("integration-{id}"))
    }

    /// The workspace's policy stream: approval rules and connection-slot reservations.
    pub fn workspace(id: &WorkspaceId) -> Self {
        Self(format!("workspace-{id}"))
    }

    /// A run's detail stream in the run-detail log: `run-<sync id>`. It is never a stream of
    /// the event log.
    pub fn run(id: SyncId) -> Self {
        Self(format!("run-{id}"))
    }

    /// The run whose detail this stream holds, if it is a run-detail stream.
    pub fn run_id(&self) -> Option<SyncId> {
        self.0
            .strip_prefix("run-")
            .and_then(|rest| rest.parse().ok())
    }

    /// A stream name from text, checked to be one of the two forms above.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if let Some(rest) = text.strip_prefix("integration-") {
            return rest.parse::<IntegrationId>().map(Self::integration);
        }
        if let Some(rest) = text.strip_prefix("workspace-") {
            return rest.parse::<WorkspaceId>().map(|ws| Self::workspace(&ws));
        }
        Err(IdError::NotASlug {
            what: "stream name",
            value: text.to_owned(),
        })
    }

    /// A stream name the caller vouches for, e.g. one read back from storage.
    pub fn from_stored(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The integration this stream belongs to, if it is an integration stream.
    pub fn integration_id(&self) -> Option<IntegrationId> {
        self.0
            .strip_prefix("integration-")
            .and_then(|rest| rest.parse().ok())
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_subject_safe_names_and_refuse_the_rest() {
        assert!("acme-corp_1".parse::<WorkspaceId>().is_ok());
        for bad in ["", "Acme", "a.b", "a b", "-a", "a*", &"x".repeat(65)] {
            assert!(bad.parse::<WorkspaceId>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!("ws".parse::<UserId>(), Err(IdError::ReservedUser));
    }

    #[test]
    fn stream_names_parse_back_to_their_ids() {
        let id = IntegrationId::new();
        let stream = StreamName::integration(id);
        assert_eq!(StreamName::parse(stream.as_str()).unwrap(), stream);
        assert_eq!(stream.integration_id(), Some(id));
        let ws: WorkspaceId = "acme".parse().unwrap();
        assert_eq!(StreamName::workspace(&ws).as_str(), "workspace-acme");
        assert!(StreamName::parse("other-1").is_err());
    }
}
