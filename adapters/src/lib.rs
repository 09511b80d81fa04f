//! Provider-facing side of Harmony Sync.
//!
//! - [`vault`]: the credential vault — secrets encrypted under per-integration data keys
//!   wrapped by a master key, so that shredding an integration destroys its secrets while its
//!   history stays auditable.
//!
//! Still to come here: OAuth2 (authorization code with PKCE, refresh) and API-key connections,
//! the provider clients (HubSpot, Salesforce, Google Calendar, Gmail, Zendesk, Twilio, Todoist,
//! CalDAV) and the sync and action workers that react to events. Nothing here may be depended
//! on by `domain` or `eventstore`.

#[cfg(feature = "fakes")]
pub mod fakes;
pub mod http;
pub mod provider;
pub mod providers;
pub mod vault;
