//! Who is acting: a user with a role in a workspace, or the system itself.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{UserId, WorkspaceId};

/// A user's role in a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Role {
    /// Manages the workspace and its integrations.
    Admin,
    /// A member; with the integration permission they manage workspace integrations too.
    Member { integration_permission: bool },
    /// Reads history and state; changes nothing.
    Auditor,
}

impl Role {
    /// May connect, change and remove workspace integrations and approve their actions.
    pub fn manages_workspace_integrations(&self) -> bool {
        matches!(
            self,
            Role::Admin
                | Role::Member {
                    integration_permission: true
                }
        )
    }

    /// May change anything at all (auditors are read-only).
    pub fn can_write(&self) -> bool {
        !matches!(self, Role::Auditor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Member {
                integration_permission: true,
            } => "integration_manager",
            Role::Member {
                integration_permission: false,
            } => "member",
            Role::Auditor => "auditor",
        })
    }
}

/// The role names are `admin`, `integration_manager` (a member with the integration
/// permission), `member` and `auditor`.
impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "admin" => Ok(Role::Admin),
            "integration_manager" => Ok(Role::Member {
                integration_permission: true,
            }),
            "member" => Ok(Role::Member {
                integration_permission: false,
            }),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!(
                "unknown role `{other}`: expected admin, integration_manager, member or auditor"
            )),
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Role> for String {
    fn from(role: Role) -> String {
        role.to_string()
    }
}

/// An authenticated user acting inside one workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user: UserId,
    pub workspace: WorkspaceId,
    pub role: Role,
}

/// Who caused a command: a user, or the service itself (a worker, the scheduler) with a reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    User(Principal),
    System { reason: String },
}

impl Caller {
    pub fn system(reason: impl Into<String>) -> Self {
        Caller::System {
            reason: reason.into(),
        }
    }

    /// The actor recorded in event metadata.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::User(principal) => Actor::User(principal.user.clone()),
            Caller::System { reason } => Actor::System(reason.clone()),
        }
    }
}

/// The actor recorded on every event: `{"user": "alice"}` or `{"system": "scheduled sync"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    User(UserId),
    System(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(user) => write!(f, "user {user}"),
            Actor::System(reason) => write!(f, "system ({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [
            Role::Admin,
            Role::Member {
                integration_permission: true,
            },
            Role::Member {
                integration_permission: false,
            },
            Role::Auditor,
        ] {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert!("owner".parse::<Role>().is_err());
    }

    #[test]
    fn actors_serialize_as_one_key_objects() {
        let user = Actor::User("alice".parse().unwrap());
        assert_eq!(serde_json::to_string(&user).unwrap(), r#"{"user":"alice"}"#);
        let system = Actor::System("token refresh".into());
        assert_eq!(
            serde_json::to_string(&system).unwrap(),
            r#"{"system":"token refresh"}"#
        );
    }
}
