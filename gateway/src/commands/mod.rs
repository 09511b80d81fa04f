//! What the `harmony` commands other than `serve` do: the auditor's commands (`history`,
//! `verify`, `export`), `bench`, `log copy`, `projections rebuild` and `vault
//! rotate-master-key`. Their command lines are in [`cli`](crate::cli); `tokens` lives with the
//! tokens themselves in [`tokens`](crate::tokens).

pub mod audit;
pub mod bench;
pub mod bench_gateway;
pub mod log;
pub mod read_models;
pub mod vault;
