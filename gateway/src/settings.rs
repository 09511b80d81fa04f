//! What `harmony serve` needs to start: [`Settings`], how sync runs are held between
//! processes, and which event log a service runs on.

use std::net::SocketAddr;
use std::path::PathBuf;

use eventstore::JetStreamConfig;

use crate::limits;

/// How long the embedded records log keeps synced record changes (personal data).
pub const RECORDS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// How long sync-run detail (progress) is kept by default: 90 days.
pub const RUN_DETAIL_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// What `harmony serve` needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the embedded log lives (and, later, the SQLite read models and the master key).
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Run the event log on NATS JetStream instead of sled under `data_dir`.
    pub jetstream: Option<JetStreamConfig>,
    /// How long synced record changes are kept on the embedded records log (on JetStream,
    /// the configuration's `records_max_age`).
    pub records_max_age: std::time::Duration,
    /// How long sync-run detail is kept: the run-detail log's runs, the sync logs' page rows
    /// and their rows of runs that changed nothing (on JetStream also the configuration's
    /// `run_detail_max_age`).
    pub run_detail_retention: std::time::Duration,
    /// The read models on PostgreSQL at this URL instead of SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// OAuth clients, the public base URL and provider endpoints.
    pub adapters: adapters::config::AdaptersConfig,
    /// Which addresses a user-supplied or provider-returned URL may reach: public ones, and
    /// the ranges opened with `--outbound-allow`.
    pub outbound: adapters::outbound::OutboundPolicy,
    /// How often the scheduler looks for due incremental syncs.
    pub schedule_tick: std::time::Duration,
    /// How sync runs are held and handed over between processes.
    pub sync: SyncSettings,
    /// The per-token rate limit; `None` for none.
    pub rate_limit: Option<limits::RateLimit>,
    /// How many event streams one token may hold open at once in a process.
    pub max_streams_per_token: usize,
    /// How often the heads of the streams that changed are signed.
    pub checkpoint_every: std::time::Duration,
    /// Run the sync worker, the action worker and the scheduler here. Off for a process that
    /// only serves the API beside others that do the work (on JetStream + PostgreSQL).
    pub run_workers: bool,
    /// Where `/metrics` is served, and to whom.
    pub metrics: MetricsSettings,
    /// The vault's master key(s) as `HARMONY_MASTER_KEY` gave them at start; `None`: the key
    /// file under `data_dir`.
    pub master_key: Option<secrecy::SecretString>,
    /// The checkpoint key as `HARMONY_CHECKPOINT_KEY` gave it at start; `None`: the key file
    /// under `data_dir`.
    pub checkpoint_key: Option<secrecy::SecretString>,
}

/// Where `/metrics` is served, and to whom. Metrics name no workspace, user or integration,
/// but their totals (sync runs, records) are the whole service's: an operator may keep them
/// from the API's callers.
#[derive(Clone, Debug, Default)]
pub struct MetricsSettings {
    /// An address of their own; `None`: on the API's address.
    pub listen: Option<SocketAddr>,
    /// The bearer token a scrape must present; `None`: none.
    pub token: Option<secrecy::SecretString>,
}

impl Settings {
    /// The embedded default under `data_dir`: sled, SQLite, no OAuth clients, on a free port.
    pub fn embedded(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jetstream: None,
            records_max_age: RECORDS_MAX_AGE,
            run_detail_retention: RUN_DETAIL_RETENTION,
            database_url: None,
            adapters: adapters::config::AdaptersConfig::default(),
            outbound: adapters::outbound::OutboundPolicy::default(),
            schedule_tick: std::time::Duration::from_secs(30),
            sync: SyncSettings::default(),
            rate_limit: limits::RateLimit::new(50, 200),
            max_streams_per_token: 8,
            checkpoint_every: std::time::Duration::from_secs(60),
            run_workers: true,
            metrics: MetricsSettings::default(),
            master_key: None,
            checkpoint_key: None,
        }
    }
}

/// How sync runs are held and handed over between processes.
#[derive(Clone, Copy, Debug)]
pub struct SyncSettings {
    /// A run's lease on its integration, renewed while it works; a process that dies holding
    /// it lets another resume the run this long after.
    pub lease: std::time::Duration,
    /// On JetStream, how long a run's work item may go without a heartbeat before another
    /// process takes it.
    pub work_ack_wait: std::time::Duration,
    /// Sync runs of different integrations at once in this process.
    pub concurrent_runs: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            lease: std::time::Duration::from_secs(30),
            work_ack_wait: std::time::Duration::from_secs(30),
            concurrent_runs: adapters::sync::SyncConfig::default().max_concurrent_runs,
        }
    }
}

/// Which event log a service runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sled,
    JetStream,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sled => "sled",
            Backend::JetStream => "jetstream",
        }
    }
}
