//! `harmony bench <suite>`: each part of Harmony Sync measured beside the raw engine (or a
//! minimal handler) underneath it, in the same run on the same machine, so the figures are
//! ratios that hold across machines.
//!
//! - [`engine`]: `bench eventstore`, the log on sled or JetStream beside raw sled or raw
//!   JetStream publishes; its [`Report`](engine::Report) and [`Figure`](engine::Figure) are
//!   what every suite reports.
//! - [`read_models`]: `bench projections`, the read models beside raw SQL inserts.
//! - [`sync`]: `bench sync`, a full sync from a fake provider, read models included.
//! - [`api`]: `bench gateway`, the HTTP API beside a minimal axum handler.
//! - [`scale`]: `bench scale`, thousands of scheduled integrations on one machine.
//! - [`run`](run::run): the command itself, a table or one JSON object.
//!
//! Nothing here is in the production build (`--no-default-features` of the `harmony` crate).

pub mod api;
pub mod engine;
pub mod read_models;
pub mod run;
pub mod scale;
pub mod sync;
