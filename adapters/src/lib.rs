//! Provider-facing side of Harmony Sync.
//!
//! This crate will hold OAuth2 (authorization code with PKCE, refresh) and API-key
//! connections, the credential vault (secrets encrypted under per-integration data keys, so
//! that deleting an integration shreds them), the provider clients (HubSpot, Salesforce,
//! Google Calendar, Gmail, Zendesk, Twilio, Todoist, CalDAV) and the sync and action workers
//! that react to events.
//!
//! At this stage it holds none of that yet; it depends on `domain` and `eventstore` only, and
//! nothing here may be depended on by them.
