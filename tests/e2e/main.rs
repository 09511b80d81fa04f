//! End-to-end tests: the service built as it runs in production, reached over real HTTP.
//! One binary for all of them (see `helpers.rs` for `spawn_app`).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod api;
mod audit;
mod browser;
mod companion;
mod consistency;
mod console;
mod health;
mod helpers;
mod installed;
mod openapi;
mod protocol;
mod security;
mod walk;
