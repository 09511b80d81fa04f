//! The gateway of Harmony Sync and the `harmony` binary's commands.
//!
//! The `harmony` crate's `main.rs` only parses the command line; everything it runs lives
//! here (but `bench`, the `bench` crate's):
//! [`Application`] opens the event log, the read models, the credential vault and the
//! checkpoint log, runs the projections, the workers and the checkpoint signer, and serves
//! HTTP — the Marketplace API under `/v1`, the admin console under `/console`, `/healthz`,
//! `/readyz`, `/metrics` and `/openapi.json`. [`cli`] holds the command lines (`serve`,
//! `history`, `verify`, `export`, `tokens`, `bench`, `log copy`, `projections rebuild`,
//! `vault rotate-master-key`); [`commands`] runs them, except `tokens`, which [`tokens`] runs,
//! and `bench`. [`scheduler`] requests the scheduled syncs.

mod api;
mod app;
mod caller;
pub mod cli;
pub mod commands;
mod consistency;
mod console;
mod cookies;
mod http;
mod idempotency;
mod lag;
pub mod limits;
mod metrics;
mod pages;
mod problem;
pub mod scheduler;
mod service;
mod settings;
mod state;
mod storage;
mod supervise;
mod tasks;
pub mod tokens;
mod views;

pub use app::{shutdown_signal, Application};
pub use settings::{
    Backend, MetricsSettings, Settings, SyncSettings, RECORDS_MAX_AGE, RUN_DETAIL_RETENTION,
};
pub use state::{AppState, Runners, Services, Shared, Workers};
pub use storage::{
    checkpoint_key_path, create_private_dir, master_key_path, open_checkpoints, open_logs,
    open_service_db, Logs,
};
