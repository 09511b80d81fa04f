//! Read models of Harmony Sync, derived from the event log.
//!
//! This crate will hold the projection runner (subscribe from a checkpoint, apply batches and
//! the checkpoint in one transaction, rebuild from position 0) and the `installed` and
//! `sync_runs` read models on SQLite and PostgreSQL through sqlx. Nothing here is the truth:
//! every table can be dropped and rebuilt from the log.
//!
//! At this stage it holds no read model yet; the foundation only fixes its place in the
//! dependency graph (it may depend on `domain` and `eventstore`, never the reverse).
