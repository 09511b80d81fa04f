//! Read models of Harmony Sync, derived from the event log.
//!
//! Nothing here is the truth: every read-model table can be dropped and rebuilt from the log.
//! The tables live in the service database (the `database` crate, re-exported as [`db`]),
//! which also holds what the service keeps and cannot derive.
//!
//! - [`installed`]: Marketplace > Installed, one row per integration, folded with the domain's
//!   own `Integration` aggregate so that status and available actions follow the same rules
//!   as the commands.
//! - [`sync_runs`]: the sync logs, one row per run with its pages, paged by cursor.
//! - [`projection`]: the projections, and a batch of the log applied to one with its
//!   checkpoint in one transaction.
//! - [`runner`]: applies the log to a projection in batches, each batch and the projection's
//!   checkpoint in one transaction, so a crash never applies an event twice or skips one; on
//!   PostgreSQL under a lease, so that of several processes exactly one writes each model.
//! - [`rebuild`]: replays the log from position 0 into fresh tables and swaps them in at once.

pub use database as db;
pub mod installed;
pub mod projection;
pub mod rebuild;
pub mod runner;
pub mod sync_runs;
#[cfg(feature = "test-support")]
pub use database::test_support;

pub use database::{ServiceDb, ServiceDbError};
