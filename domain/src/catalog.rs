//! The app catalog behind Marketplace > Apps, and the Models tab.
//!
//! Each app says whether it is a workspace or personal integration, how it authenticates, the
//! setup fields it asks for (with their validation), the access it needs (shown before
//! connecting), and what it can do once connected. The catalog is data: adding an app here is
//! half of adding a provider; the other half is its client in `adapters`.

use serde::Serialize;

/// Marketplace categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Crm,
    Telephony,
    ContactCenter,
    Calendar,
    Email,
    TaskManager,
}

/// Who an app's connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AppScope {
    /// Connected by an admin or a member with the integration permission, for the whole
    /// organization.
    Workspace,
    /// Connected by one user, for their own workflows; invisible to everyone else.
    Personal,
}

impl AppScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            AppScope::Workspace => "workspace",
            AppScope::Personal => "personal",
        }
    }
}

/// How the app proves who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthKind {
    /// Authorization-code flow in a popup; the scopes are requested from the provider.
    Oauth2 {
        scopes: &'static [&'static str],
        revocable: bool,
    },
    /// Keys, tokens or passwords typed into setup fields marked secret.
    ApiKey,
}

/// The type of a setup field, which decides its validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldKind {
    /// An `https://` URL, such as a Salesforce instance or a CalDAV server.
    Url,
    /// A provider subdomain or workspace slug: letters, digits and hyphens.
    Subdomain,
    /// One of a fixed list of regions.
    Region { choices: &'static [&'static str] },
    /// An email address.
    Email,
    /// Free text such as a username or an OAuth client id.
    Text,
    /// A Twilio account SID: `AC` and 32 hex digits.
    AccountSid,
    /// A key, token or password. Never stored in the log: it goes to the vault.
    Secret,
}

impl FieldKind {
    /// Checks a value typed for this field; the message says what is expected.
    pub fn validate(&self, value: &str) -> Result<(), String> {
        let value_is_blank = value.trim().is_empty();
        if value_is_blank {
            return Err("must not be empty".into());
        }
        match self {
            FieldKind::Url => validate_https_url(value),
            FieldKind::Subdomain => {
                let ok = value.len() <= 63
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !value.starts_with('-')
                    && !value.ends_with('-');
                if ok {
                    Ok(())
                } else {
                    Err("must be a subdomain: lowercase letters, digits and inner hyphens, at most 63".into())
                }
            }
            FieldKind::Region { choices } => {
                if choices.contains(&value) {
                    Ok(())
                } else {
                    Err(format!("must be one of {}", choices.join(", ")))
                }
            }
            FieldKind::Email => {
                let ok = value.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && !value.contains(char::is_whitespace)
                });
                if ok {
                    Ok(())
                } else {
                    Err("must be an email address".into())
                }
            }
            FieldKind::Text | FieldKind::Secret => {
                if value.len() > 4096 {
                    Err("must be at most 4096 characters".into())
                } else {
                    Ok(())
                }
            }
            FieldKind::AccountSid => {
                let ok = value.len() == 34
                    && value.starts_with("AC")
                    && value[2..].bytes().all(|b| b.is_ascii_hexdigit());
                if ok {
                    Ok(())
                } else {
                    Err("must be an account SID: AC followed by 32 hex digits".into())
                }
            }
        }
    }
}

/// An `https://` URL, or an `http://` one on this machine's loopback interface (a server such
/// as Radicale running beside the service), where no network sees the traffic.
fn validate_https_url(value: &str) -> Result<(), String> {
    let (rest, plain) = match (
        value.strip_prefix("https://"),
        value.strip_prefix("http://"),
    ) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err("must be an https:// URL".into()),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if plain {
        let loopback = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|name| host == *name || host.starts_with(&format!("{name}:")));
        if !loopback {
            return Err("must be an https:// URL (http:// only on 127.0.0.1 or localhost)".into());
        }
    }
    let host_name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let host_ok = !host_name.is_empty()
        && host_name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || b == b'-'
                || b == b'.'
                || b == b'['
                || b == b']'
                || b == b':'
        });
    if !host_ok || value.contains(char::is_whitespace) {
        return Err("must be an https:// URL with a host name".into());
    }
    Ok(())
}

/// One field the connection flow asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetupField {
    pub name: &'static str,
    pub label: &'static str,
    #[serde(flatten)]
    pub kind: FieldKind,
    pub required: bool,
    pub help: &'static str,
}

impl SetupField {
    pub fn is_secret(&self) -> bool {
        matches!(self.kind, FieldKind::Secret)
    }
}

/// A provider object that can be mapped onto a Harmony object field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MappableObject {
    /// The provider's object name, e.g. `contacts` or `Contact`.
    pub name: &'static str,
    /// The Harmony object it maps onto.
    pub harmony_object: &'static str,
    /// The provider's standard fields; custom fields are discovered from the provider.
    pub provider_fields: &'static [&'static str],
    /// The Harmony fields a provider field may be mapped onto.
    pub harmony_fields: &'static [&'static str],
}

/// A tool Companion may use through this app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompanionTool {
    pub name: &'static str,
    pub description: &'static str,
    /// Companion asks for confirmation first, unless an auto-approval rule matches.
    pub sensitive: bool,
}

/// What a connected app can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    pub test_connection: bool,
    pub reauth: bool,
    pub full_sync: bool,
    pub incremental_sync: bool,
    pub sync_logs: bool,
    /// The objects synced, in the provider's names.
    pub sync_objects: &'static [&'static str],
    /// Empty when the app does not support mappings.
    pub mappings: &'static [MappableObject],
    pub tools: &'static [CompanionTool],
}

/// One app of the Marketplace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct App {
    pub id: &'static str,
    pub name: &'static str,
    pub category: Category,
    pub scope: AppScope,
    pub auth: AuthKind,
    pub setup_fields: &'static [SetupField],
    /// What the app will be able to see and do, in words, shown before connecting.
    pub access: &'static [&'static str],
    pub capabilities: Capabilities,
}

impl App {
    pub fn tool(&self, name: &str) -> Option<&'static CompanionTool> {
        self.capabilities
            .tools
            .iter()
            .find(|tool| tool.name == name)
    }

    pub fn mappable_object(&self, name: &str) -> Option<&'static MappableObject> {
        self.capabilities
            .mappings
            .iter()
            .find(|object| object.name == name)
    }

    pub fn setup_field(&self, name: &str) -> Option<&'static SetupField> {
        self.setup_fields.iter().find(|field| field.name == name)
    }
}

const CONTACT_FIELDS: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "phone",
    "company",
    "title",
];
const COMPANY_FIELDS: &[&str] = &["name", "domain", "phone", "industry"];

const FULL_SYNC_CAPABILITIES: Capabilities = Capabilities {
    test_connection: true,
    reauth: true,
    full_sync: true,
    incremental_sync: true,
    sync_logs: true,
    sync_objects: &[],
    mappings: &[],
    tools: &[],
};

static APPS: &[App] = &[
    App {
        id: "hubspot",
        name: "HubSpot",
        category: Category::Crm,
        scope: AppScope::Workspace,
        auth: AuthKind::Oauth2 {
            scopes: &[
                "oauth",
                "crm.objects.contacts.read",
                "crm.objects.contacts.write",
                "crm.objects.companies.read",
                "crm.schemas.contacts.read",
            ],
            revocable: true,
        },
        setup_fields: &[],
        access: &[
            "Read and create contacts",
            "Read companies",
            "Read contact property definitions, for field mappings",
        ],
        capabilities: Capabilities {
            sync_objects: &["contacts", "companies"],
            mappings: &[
                MappableObject {
                    name: "contacts",
                    harmony_object: "contact",
                    provider_fields: &[
                        "firstname",
                        "lastname",
                        "email",
                        "phone",
                        "company",
                        "jobtitle",
                    ],
                    harmony_fields: CONTACT_FIELDS,
                },
                MappableObject {
                    name: "companies",
                    harmony_object: "company",
                    provider_fields: &["name", "domain", "phone", "industry"],
                    harmony_fields: COMPANY_FIELDS,
                },
            ],
            tools: &[
                CompanionTool {
                    name: "search_contacts",
                    description: "Find contacts by name or email",
                    sensitive: false,
                },
                CompanionTool {
                    name: "create_contact",
                    description: "Create a contact",
                    sensitive: false,
                },
                CompanionTool {
                    name: "update_contact",
                    description: "Change a contact's properties",
                    sensitive: true,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "salesforce",
        name: "Salesforce",
        category: Category::Crm,
        scope: AppScope::Workspace,
        auth: AuthKind::Oauth2 {
            scopes: &["api", "refresh_token"],
            revocable: true,
        },
        setup_fields: &[
            SetupField {
                name: "instance_url",
                label: "Instance URL",
                kind: FieldKind::Url,
                required: true,
                help: "Your My Domain URL, e.g. https://acme.my.salesforce.com",
            },
            SetupField {
                name: "client_id",
                label: "Connected app consumer key",
                kind: FieldKind::Text,
                required: false,
                help: "Only if your organization requires its own connected app",
            },
            SetupField {
                name: "client_secret",
                label: "Connected app consumer secret",
                kind: FieldKind::Secret,
                required: false,
                help: "Only with your own consumer key",
            },
        ],
        access: &[
            "Read and write contacts and accounts",
            "Read object descriptions, for field mappings",
            "Stay signed in (refresh token)",
        ],
        capabilities: Capabilities {
            sync_objects: &["Contact", "Account"],
            mappings: &[
                MappableObject {
                    name: "Contact",
                    harmony_object: "contact",
                    provider_fields: &[
                        "FirstName",
                        "LastName",
                        "Email",
                        "Phone",
                        "Title",
                        "AccountId",
                    ],
                    harmony_fields: CONTACT_FIELDS,
                },
                MappableObject {
                    name: "Account",
                    harmony_object: "company",
                    provider_fields: &["Name", "Website", "Phone", "Industry"],
                    harmony_fields: COMPANY_FIELDS,
                },
            ],
            tools: &[
                CompanionTool {
                    name: "search_records",
                    description: "Search contacts and accounts",
                    sensitive: false,
                },
                CompanionTool {
                    name: "create_contact",
                    description: "Create a contact",
                    sensitive: false,
                },
                CompanionTool {
                    name: "update_opportunity",
                    description: "Change an opportunity's stage or amount",
                    sensitive: true,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "zendesk",
        name: "Zendesk",
        category: Category::ContactCenter,
        scope: AppScope::Workspace,
        auth: AuthKind::ApiKey,
        setup_fields: &[
            SetupField {
                name: "subdomain",
                label: "Subdomain",
                kind: FieldKind::Subdomain,
                required: true,
                help: "The `acme` of acme.zendesk.com",
            },
            SetupField {
                name: "email",
                label: "Agent email",
                kind: FieldKind::Email,
                required: true,
                help: "The agent the API token belongs to",
            },
            SetupField {
                name: "api_token",
                label: "API token",
                kind: FieldKind::Secret,
                required: true,
                help: "Admin Center > Apps and integrations > Zendesk API",
            },
        ],
        access: &["Read tickets and users", "Create tickets and comments"],
        capabilities: Capabilities {
            sync_objects: &["tickets", "users"],
            tools: &[
                CompanionTool {
                    name: "search_tickets",
                    description: "Find tickets",
                    sensitive: false,
                },
                CompanionTool {
                    name: "create_ticket",
                    description: "Open a ticket",
                    sensitive: false,
                },
                CompanionTool {
                    name: "add_public_comment",
                    description: "Reply to the requester",
                    sensitive: true,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "twilio",
        name: "Twilio",
        category: Category::Telephony,
        scope: AppScope::Workspace,
        auth: AuthKind::ApiKey,
        setup_fields: &[
            SetupField {
                name: "account_sid",
                label: "Account SID",
                kind: FieldKind::AccountSid,
                required: true,
                help: "Console > Account info",
            },
            SetupField {
                name: "auth_token",
                label: "Auth token",
                kind: FieldKind::Secret,
                required: true,
                help: "Console > Account info",
            },
            SetupField {
                name: "region",
                label: "Region",
                kind: FieldKind::Region {
                    choices: &["us1", "ie1", "au1"],
                },
                required: true,
                help: "Where your account's data is processed",
            },
        ],
        access: &["Read call and message logs", "Send SMS from your numbers"],
        capabilities: Capabilities {
            sync_objects: &["calls", "messages"],
            tools: &[
                CompanionTool {
                    name: "list_calls",
                    description: "List recent calls",
                    sensitive: false,
                },
                CompanionTool {
                    name: "send_sms",
                    description: "Send a text message",
                    sensitive: true,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "google-calendar",
        name: "Google Calendar",
        category: Category::Calendar,
        scope: AppScope::Personal,
        auth: AuthKind::Oauth2 {
            scopes: &[
                "openid",
                "email",
                "https://www.googleapis.com/auth/calendar.events",
            ],
            revocable: true,
        },
        setup_fields: &[],
        access: &[
            "See and edit events on your calendars",
            "Your email address, to label the connection",
        ],
        capabilities: Capabilities {
            sync_objects: &["events"],
            tools: &[
                CompanionTool {
                    name: "list_events",
                    description: "List upcoming events",
                    sensitive: false,
                },
                CompanionTool {
                    name: "create_event",
                    description: "Create an event",
                    sensitive: false,
                },
                CompanionTool {
                    name: "delete_event",
                    description: "Delete an event",
                    sensitive: true,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "gmail",
        name: "Gmail",
        category: Category::Email,
        scope: AppScope::Personal,
        auth: AuthKind::Oauth2 {
            scopes: &[
                "openid",
                "email",
                "https://www.googleapis.com/auth/gmail.readonly",
                "https://www.googleapis.com/auth/gmail.send",
            ],
            revocable: true,
        },
        setup_fields: &[],
        access: &["Read your email", "Send email as you"],
        capabilities: Capabilities {
            sync_objects: &["messages"],
            tools: &[
                CompanionTool {
                    name: "search_messages",
                    description: "Search your mail",
                    sensitive: false,
                },
                CompanionTool {
                    name: "send_email",
                    description: "Send an email",
                    sensitive: true,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "todoist",
        name: "Todoist",
        category: Category::TaskManager,
        scope: AppScope::Personal,
        auth: AuthKind::ApiKey,
        setup_fields: &[SetupField {
            name: "api_token",
            label: "API token",
            kind: FieldKind::Secret,
            required: true,
            help: "Settings > Integrations > Developer",
        }],
        access: &["Read and create your tasks and projects"],
        capabilities: Capabilities {
            sync_objects: &["tasks"],
            tools: &[
                CompanionTool {
                    name: "create_task",
                    description: "Add a task",
                    sensitive: false,
                },
                CompanionTool {
                    name: "complete_task",
                    description: "Complete a task",
                    sensitive: false,
                },
            ],
            ..FULL_SYNC_CAPABILITIES
        },
    },
    App {
        id: "caldav",
        name: "CalDAV calendar",
        category: Category::Calendar,
        scope: AppScope::Personal,
        auth: AuthKind::ApiKey,
        setup_fields: &[
            SetupField {
                name: "server_url",
                label: "Calendar URL",
                kind: FieldKind::Url,
                required: true,
                help: "The calendar collection URL your provider gives",
            },
            SetupField {
                name: "username",
                label: "Username",
                kind: FieldKind::Text,
                required: true,
                help: "",
            },
            SetupField {
                name: "app_password",
                label: "App password",
                kind: FieldKind::Secret,
                required: true,
                help: "An app-specific password, not your main one",
            },
        ],
        access: &["Read and create events in this calendar"],
        capabilities: Capabilities {
            sync_objects: &["events"],
            tools: &[CompanionTool {
                name: "create_event",
                description: "Create an event",
                sensitive: false,
            }],
            ..FULL_SYNC_CAPABILITIES
        },
    },
];

/// Every app of the Marketplace.
pub fn apps() -> &'static [App] {
    APPS
}

/// One app by its id.
pub fn app(id: &str) -> Option<&'static App> {
    APPS.iter().find(|app| app.id == id)
}

/// An AI model Companion can use (Marketplace > Models).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Model {
    pub id: &'static str,
    pub name: &'static str,
    pub vendor: &'static str,
    pub context_window: u32,
    pub description: &'static str,
}

static MODELS: &[Model] = &[
    Model {
        id: "companion-fast",
        name: "Companion Fast",
        vendor: "Harmony",
        context_window: 32_000,
        description: "Quick answers and short drafts",
    },
    Model {
        id: "companion-pro",
        name: "Companion Pro",
        vendor: "Harmony",
        context_window: 200_000,
        description: "Long documents, careful reasoning and multi-step tool use",
    },
    Model {
        id: "open-70b",
        name: "Open 70B",
        vendor: "Open weights",
        context_window: 128_000,
        description: "An open-weights model for workspaces that require one",
    },
];

/// The Models tab.
pub fn models() -> &'static [Model] {
    MODELS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_holds_the_eight_apps_with_their_scopes() {
        let expect = [
            ("hubspot", AppScope::Workspace),
            ("salesforce", AppScope::Workspace),
            ("zendesk", AppScope::Workspace),
            ("twilio", AppScope::Workspace),
            ("google-calendar", AppScope::Personal),
            ("gmail", AppScope::Personal),
            ("todoist", AppScope::Personal),
            ("caldav", AppScope::Personal),
        ];
        for (id, scope) in expect {
            assert_eq!(
                app(id).unwrap_or_else(|| panic!("{id} missing")).scope,
                scope
            );
        }
        assert!(app("hubspot").unwrap().capabilities.mappings.len() == 2);
        assert!(app("zendesk").unwrap().capabilities.mappings.is_empty());
        assert!(app("twilio").unwrap().tool("send_sms").unwrap().sensitive);
        assert!(!models().is_empty());
    }

    #[test]
    fn every_app_lists_access_and_unique_field_and_tool_names() {
        for app in apps() {
            assert!(!app.access.is_empty(), "{} shows no access", app.id);
            let mut names: Vec<_> = app.setup_fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), app.setup_fields.len(), "{}", app.id);
            let api_key_has_secret = app.setup_fields.iter().any(SetupField::is_secret);
            if app.auth == AuthKind::ApiKey {
                assert!(api_key_has_secret, "{} has no secret field", app.id);
            }
        }
    }

    #[test]
    fn setup_fields_validate_their_kind() {
        assert!(FieldKind::Url
            .validate("https://acme.my.salesforce.com")
            .is_ok());
        assert!(FieldKind::Url
            .validate("https://127.0.0.1:8443/cal/")
            .is_ok());
        assert!(FieldKind::Url.validate("http://acme.example").is_err());
        assert!(FieldKind::Url
            .validate("http://127.0.0.1:5232/jane/")
            .is_ok());
        assert!(FieldKind::Url.validate("http://localhost/cal/").is_ok());
        assert!(FieldKind::Url
            .validate("http://localhost.evil.example/")
            .is_err());
        assert!(FieldKind::Url
            .validate("http://127.0.0.1.evil.example/")
            .is_err());
        assert!(FieldKind::Url.validate("https://").is_err());
        assert!(FieldKind::Subdomain.validate("acme-support").is_ok());
        assert!(FieldKind::Subdomain.validate("Acme.support").is_err());
        let region = FieldKind::Region {
            choices: &["us1", "ie1"],
        };
        assert!(region.validate("ie1").is_ok());
        assert!(region.validate("eu").unwrap_err().contains("us1, ie1"));
        assert!(FieldKind::AccountSid
            .validate(&format!("AC{}", "0f".repeat(16)))
            .is_ok());
        assert!(FieldKind::AccountSid.validate("AC123").is_err());
        assert!(FieldKind::Email.validate("agent@acme.com").is_ok());
        assert!(FieldKind::Email.validate("agent").is_err());
        assert!(FieldKind::Text.validate("  ").is_err());
    }
}
