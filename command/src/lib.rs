//! The command layer of Harmony Sync: between the storage engine (`eventstore`) and what
//! reacts to the log (`projections`, `adapters`) and serves it (`gateway`).
//!
//! [`repository`] loads aggregates (with snapshots, so loading stays fast however long a
//! stream grows), lets the domain decide, and appends what it decided with the version it read,
//! retrying on a conflict. [`lifecycle`] holds the parts of an integration's life that span two
//! streams: a connect reserves the app's slot on the workspace's policy stream first, a
//! disconnect or delete releases it; which holders free a slot is the domain's rule
//! ([`domain::policy::SlotHolding`]). [`work_queue`] hands work between processes on JetStream.
//! [`actions`] reads one Companion action's course from its stream.
//! [`run_detail`] checks the run detail that run outcomes commit to.
//! [`checkpoints`] signs stream heads into a log of their own, so a history rewritten with
//! recomputed hashes is caught. [`written`] remembers the last position a request wrote, for
//! reading one's own writes; [`keyfile`] writes private key files whole or not at all.

pub mod actions;
pub mod checkpoints;
pub mod keyfile;
pub mod lifecycle;
pub mod repository;
pub mod run_detail;
pub mod work_queue;
pub mod written;
