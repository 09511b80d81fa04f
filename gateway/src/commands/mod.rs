//! What the `harmony` commands other than `serve` do: the auditor's commands (`history`,
//! `verify`, `export`), `fake-provider` and `serve --demo` (feature `fakes`), `log copy`, `projections rebuild` and `vault
//! rotate-master-key`. `bench` is the `bench` crate's. Their command lines are in [`cli`](crate::cli); `tokens` lives with the
//! tokens themselves in [`tokens`](crate::tokens).

pub mod audit;
#[cfg(feature = "fakes")]
pub mod demo;
#[cfg(feature = "fakes")]
pub mod fake_provider;
pub mod log;
pub mod read_models;
pub mod vault;
