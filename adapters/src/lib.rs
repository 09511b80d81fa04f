//! Provider-facing side of Harmony Sync.
//!
//! - [`vault`]: the credential vault — secrets encrypted under per-integration data keys
//!   wrapped by a master key, so that shredding an integration destroys its secrets while its
//!   history stays auditable.
//!
//! - [`oauth`]: the authorization-code flow with PKCE and single-use states, refresh and
//!   revocation, on the `oauth2` crate; [`credentials`]: credentials read from the vault and
//!   refreshed single-flight across processes.
//! - [`provider`]: the `Provider` trait every client implements; [`providers`]: the clients;
//!   [`http`]: retries, backoff, rate limits and body caps shared by all of them;
//!   [`outbound`]: which hosts they may reach (no loopback or private network through a setup
//!   field or a provider's answer).
//! - [`connections`]: connect, reauth, test and disconnect, as the gateway calls them.
//! - [`sync`]: the sync worker (pages pulled, mapped, hashed, diffed and published; progress
//!   recorded where a page changed something); [`actions`]: the Companion action worker.
//!   Both follow the log from a checkpoint of their own and hold their work under a lease of
//!   `database::lease`.
//!
//! Nothing here may be depended on by `domain`, `eventstore` or `command`, and nothing here
//! depends on `projections`: what reads the read side (the scheduler) lives in the gateway.
//! The fake providers are the `fakes` crate.

/// Runs `$body` with `$pool` bound to whichever database `$db` is.
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            database::ServiceDb::Sqlite($pool) => $body,
            database::ServiceDb::Postgres($pool) => $body,
        }
    };
}

pub mod actions;
pub mod config;
pub mod connections;
pub mod credentials;
mod dispatch;
pub mod http;
pub mod oauth;
pub mod outbound;
pub mod provider;
pub mod providers;
pub mod sync;
pub mod vault;
pub mod xml;
