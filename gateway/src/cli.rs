//! The `harmony` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Harmony Sync: the event-sourced back end of the Marketplace's integrations.
#[derive(Debug, Parser)]
#[command(name = "harmony", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (embedded: the event log on sled under --data-dir; distributed with
    /// --nats-url).
    Serve(ServeArgs),
    /// An integration's history: every event with its actor and time, or its state as of a
    /// moment.
    History(HistoryArgs),
    /// Check the hash chains and the signed checkpoints of one integration or of the whole
    /// log; exits non-zero naming the first broken link.
    Verify(VerifyArgs),
    /// A workspace's integration lifecycle events as NDJSON on standard output (no records,
    /// no secrets).
    Export(ExportArgs),
    /// Measure a part of the system beside the raw engine underneath it.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Operate on the event log itself.
    #[command(subcommand)]
    Log(LogCommand),
    /// Operate on the read models (Installed, the sync logs).
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Operate on the credential vault.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Manage the API tokens callers present as `Authorization: Bearer …`.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Run a fake provider on loopback, speaking its real wire format: for trying the service
    /// without a provider account, and for `harmony bench sync`.
    #[cfg(feature = "fakes")]
    #[command(subcommand)]
    FakeProvider(FakeProviderCommand),
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The integration's id.
    pub integration: String,
    /// Instead of the events, the state as of this RFC 3339 time (every event that occurred
    /// at or before it).
    #[arg(long)]
    pub as_of: Option<String>,
    /// JSON (one object per event, or the state) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The integration's id; or --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub integration: Option<String>,
    /// Every stream in the log.
    #[arg(long)]
    pub all: bool,
    /// The checkpoint key file, when it is not the data directory's (HARMONY_CHECKPOINT_KEY
    /// also works).
    #[arg(long)]
    pub checkpoint_key: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The workspace whose integrations' events to export.
    #[arg(long)]
    pub workspace: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token for a user of a workspace with a role; prints the token (shown once).
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List(TokenListArgs),
    /// Revoke a token: refused from that moment.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The workspace the token acts in.
    #[arg(long)]
    pub workspace: String,
    /// The user it acts as.
    #[arg(long)]
    pub user: String,
    /// admin, integration_manager (a member with the integration permission), member or
    /// auditor (read-only).
    #[arg(long)]
    pub role: String,
    /// A note of what the token is for.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Exempt the token from the per-token rate limit (for a trusted service or a load test).
    #[arg(long)]
    pub unlimited: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    /// Only this workspace's tokens.
    #[arg(long)]
    pub workspace: Option<String>,
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id (`tok_…`, from `create` or `list`).
    pub id: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Subcommand)]
pub enum FakeProviderCommand {
    /// A fake HubSpot (CRM v3 contacts and companies, OAuth, rate-limit headers). Prints its
    /// base URL on the first line of standard output, then serves until stopped.
    Hubspot(FakeHubSpotArgs),
    /// A fake Salesforce (OAuth with an instance URL, SOQL queries of contacts and accounts).
    Salesforce(FakeCountsArgs),
    /// A fake Google: Calendar v3 events and Gmail v1 messages, one OAuth server for both
    /// apps (`google-calendar`, `gmail`).
    Google(FakeCountsArgs),
    /// A fake Zendesk (tickets and users, incremental exports, API-token Basic auth) at
    /// subdomain `acme`.
    Zendesk(FakeCountsArgs),
    /// A fake Twilio region (messages and calls, Basic auth with an account SID).
    Twilio(FakeCountsArgs),
    /// A fake Todoist (tasks, bearer API token).
    Todoist(FakeCountsArgs),
    /// A fake CalDAV server (one calendar, sync-collection, calendar-multiget).
    Caldav(FakeCountsArgs),
}

/// Every fake but HubSpot: how many records of each of its kinds it serves. Each prints its
/// base URL on the first line of standard output, and on standard error the credentials it
/// accepts and the configuration that points the service at it; then serves until stopped.
#[derive(Debug, Args)]
pub struct FakeCountsArgs {
    /// Records of each kind the fake serves (contacts and accounts, events and messages,
    /// tickets and users, messages and calls, tasks, events), generated from their number.
    #[arg(long, default_value_t = 100)]
    pub records: u64,
}

#[derive(Debug, Args)]
pub struct FakeHubSpotArgs {
    /// Where to listen; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Contacts to serve, generated from their number.
    #[arg(long, default_value_t = 1000)]
    pub contacts: u64,
    /// Companies to serve.
    #[arg(long, default_value_t = 100)]
    pub companies: u64,
    /// An access token to accept besides those the fake's OAuth flow issues.
    #[arg(long)]
    pub accept_token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Re-wrap every integration's data key under a new master key, in one transaction, then
    /// put the new key in the master key file. Secrets themselves are not re-encrypted.
    #[command(alias = "rotate-key")]
    RotateMasterKey(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The new master key: a file holding base64 of 32 bytes, readable by its owner alone.
    /// `harmony vault rotate-master-key --generate` makes one instead.
    #[arg(long, required_unless_present = "generate")]
    pub new_key_file: Option<PathBuf>,
    /// Generate the new key.
    #[arg(long)]
    pub generate: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Copy the whole log to another backend (sled to JetStream or back), preserving ids,
    /// versions and hashes; resumable; verifies the target at the end. Also backup and restore.
    Copy(CopyArgs),
    /// Age sync-run detail out now, as the running service does hourly: the run-detail log's
    /// runs older than --sync-detail-retention-days (on JetStream the stream's max age does it),
    /// and the sync logs' page rows and rows of runs that changed nothing. The event log is
    /// never touched. Embedded (sled), stop the service first.
    AgeOut(AgeOutArgs),
}

#[derive(Debug, Args)]
pub struct AgeOutArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The source: a data directory (its log/ is read) or a NATS URL (nats://…).
    #[arg(long)]
    pub from: String,
    /// The target: a data directory (created if missing) or a NATS URL.
    #[arg(long)]
    pub to: String,
    /// The source's JetStream namespace.
    #[arg(long, default_value = "harmony")]
    pub from_namespace: String,
    /// The target's JetStream namespace.
    #[arg(long, default_value = "harmony")]
    pub to_namespace: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to serve HTTP on.
    #[arg(long, env = "HARMONY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A TOML file with the OAuth clients, the public base URL and provider endpoints (see
    /// docs/PROVIDERS.md); the HARMONY_OAUTH_* and HARMONY_PUBLIC_BASE_URL variables override it.
    #[arg(long, env = "HARMONY_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often the scheduler looks for integrations due an incremental sync.
    #[arg(long, env = "HARMONY_SCHEDULE_TICK_SECONDS", default_value_t = 30)]
    pub schedule_tick_seconds: u64,
    /// A sync run's lease on its integration; a process that dies mid-run lets another
    /// resume it this long after.
    #[arg(long, env = "HARMONY_SYNC_LEASE_SECONDS", default_value_t = 30)]
    pub sync_lease_seconds: u64,
    /// Sync runs of different integrations at once in this process. A run that finds
    /// nothing mostly waits on the provider, the log and the database: on JetStream +
    /// PostgreSQL, where each of those is a round trip away, more at once keeps a schedule
    /// of thousands of integrations on time.
    #[arg(long, env = "HARMONY_SYNC_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub sync_concurrency: u16,
    /// On JetStream: how long a sync run's work item may go without a heartbeat before
    /// another process takes it over (fixed when the queue is first created).
    #[arg(long, env = "HARMONY_SYNC_WORK_ACK_WAIT_SECONDS", default_value_t = 30)]
    pub sync_work_ack_wait_seconds: u64,
    /// Requests a second each API token may make on average (0: no limit); tokens created
    /// `--unlimited` are exempt.
    #[arg(long, env = "HARMONY_RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,
    /// How many requests a token may make at once before the average applies.
    #[arg(long, env = "HARMONY_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// How many event streams (SSE) one token may hold open at once in this process.
    #[arg(long, env = "HARMONY_MAX_STREAMS_PER_TOKEN", default_value_t = 8)]
    pub max_streams_per_token: usize,
    /// How often the service signs the heads of the streams that changed (signed checkpoints,
    /// kept in their own log; the key is `checkpoint.key` under the data directory or
    /// HARMONY_CHECKPOINT_KEY).
    #[arg(long, env = "HARMONY_CHECKPOINT_SECONDS", default_value_t = 60)]
    pub checkpoint_seconds: u64,
    /// Serve the API and run the projections, but leave sync runs, Companion actions and the
    /// scheduler to other processes (on JetStream + PostgreSQL; the API still accepts them).
    #[arg(long, env = "HARMONY_NO_WORKERS")]
    pub no_workers: bool,
    /// Serve `/metrics` on this address of its own instead of the API's (the API then has no
    /// `/metrics`): an address only the operator's scraper reaches.
    #[arg(long, env = "HARMONY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Answer `/metrics` only to `Authorization: Bearer <this token>` (any string; keep it in
    /// the environment rather than on the command line).
    #[arg(long, env = "HARMONY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Logs as one JSON object per line (for a log collector) instead of text.
    #[arg(long, env = "HARMONY_LOG_JSON")]
    pub log_json: bool,
    /// Address ranges (CIDR, comma-separated) that URLs typed by users or returned by
    /// providers may reach beyond public addresses: an on-premises CalDAV server, say.
    /// Loopback, private, link-local and CGNAT addresses are refused otherwise; the endpoints
    /// of the configuration file are always trusted.
    #[arg(long, env = "HARMONY_OUTBOUND_ALLOW", value_delimiter = ',', value_parser = adapters::outbound::parse_allow)]
    pub outbound_allow: Vec<adapters::outbound::IpNet>,
    /// Try the service: every provider faked on loopback and configured, a workspace `acme`
    /// with an admin, a member and an auditor whose tokens are printed, and Zendesk connected
    /// and syncing. Its state lives in a temporary directory that goes when it stops.
    #[arg(long, conflicts_with_all = ["nats_url", "database_url", "config", "no_workers"])]
    pub demo: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// A secret value of the command line or its environment, kept out of `Debug`.
fn secret(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_owned()))
}

/// Where a service keeps its state: what `serve` and the operators' commands share.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Where the embedded event log and the service's other state live.
    #[arg(long, env = "HARMONY_DATA_DIR", default_value = "./harmony-data")]
    pub data_dir: PathBuf,
    /// Run the event log on NATS JetStream at this URL (e.g. nats://127.0.0.1:4222; several
    /// servers comma-separated) instead of sled under --data-dir.
    #[arg(long, env = "HARMONY_NATS_URL")]
    pub nats_url: Option<String>,
    /// Keep the read models (Installed, the sync logs) on PostgreSQL at this URL instead of
    /// SQLite under --data-dir (e.g. postgres://user@host/harmony).
    #[arg(long, env = "HARMONY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// How many days synced record changes (personal data) are kept on the records log.
    #[arg(long, env = "HARMONY_RECORDS_MAX_AGE_DAYS", default_value_t = 30)]
    pub records_max_age_days: u64,
    /// How many days sync-run detail is kept: each run's pages (the run-detail log, and the
    /// sync logs' page rows) and the sync-log rows of runs that changed nothing. A run's
    /// request and outcome stay in the event log for ever. At least 1.
    #[arg(long, env = "HARMONY_SYNC_DETAIL_RETENTION_DAYS", default_value = "90", value_parser = retention_days)]
    pub sync_detail_retention_days: u64,
    /// The vault's master key (base64 of 32 bytes; several comma-separated during a
    /// rotation), read here once from HARMONY_MASTER_KEY; else the key file under --data-dir.
    #[arg(long = "master-key-base64", env = "HARMONY_MASTER_KEY", hide = true, hide_env_values = true, value_parser = secret)]
    pub master_key: Option<secrecy::SecretString>,
    /// The checkpoint signing key (base64), read here once from HARMONY_CHECKPOINT_KEY; else
    /// the key file under --data-dir.
    #[arg(long = "checkpoint-key-base64", env = "HARMONY_CHECKPOINT_KEY", hide = true, hide_env_values = true, value_parser = secret)]
    pub checkpoint_key_base64: Option<secrecy::SecretString>,
    #[command(flatten)]
    pub jetstream: JetStreamArgs,
}

/// A retention in whole days: at least one.
fn retention_days(text: &str) -> Result<u64, String> {
    match text.trim().parse::<i64>() {
        Ok(days) if days >= 1 => Ok(days.unsigned_abs()),
        Ok(days) => Err(format!(
            "{days} days would keep no run detail at all: give at least 1 (the default is 90)"
        )),
        Err(_) => Err(format!("{text:?} is not a whole number of days")),
    }
}

impl StorageArgs {
    pub fn records_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.records_max_age_days.max(1) * 24 * 3600)
    }

    /// How long sync-run detail is kept (`--sync-detail-retention-days`).
    pub fn run_detail_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.sync_detail_retention_days.max(1) * 24 * 3600)
    }

    /// The JetStream configuration, with --nats-url.
    pub fn jetstream_config(&self) -> Option<eventstore::JetStreamConfig> {
        self.nats_url.as_deref().map(|url| {
            let mut config = self.jetstream.config(url);
            config.records_max_age = self.records_max_age();
            config.run_detail_max_age = self.run_detail_retention();
            config
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Replay the whole log into fresh tables and swap them in at once: readers see the old
    /// read model until the new one is complete. Embedded (sled), stop the service first; on
    /// JetStream, run it beside the running services.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Rebuild only this read model (installed, sync_runs); all of them by default.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// How the JetStream streams are set up (with --nats-url).
#[derive(Debug, Args)]
pub struct JetStreamArgs {
    /// Replicas of each stream: 3 on a production cluster.
    #[arg(long, env = "HARMONY_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Prefix of the stream, subject and bucket names (`harmony` → HARMONY_EVENTS,
    /// harmony.events.…).
    #[arg(long, env = "HARMONY_NATS_NAMESPACE", default_value = "harmony")]
    pub nats_namespace: String,
    /// How long JetStream remembers event ids to drop re-sent appends, in seconds.
    #[arg(long, env = "HARMONY_NATS_DUPLICATE_WINDOW", default_value_t = 120)]
    pub nats_duplicate_window: u64,
    /// How long an append or read may wait for JetStream before failing, in seconds.
    #[arg(long, env = "HARMONY_NATS_TIMEOUT", default_value_t = 5)]
    pub nats_timeout: u64,
}

impl JetStreamArgs {
    /// The store configuration for `url`.
    pub fn config(&self, url: &str) -> eventstore::JetStreamConfig {
        let mut config = eventstore::JetStreamConfig::new(url);
        config.replicas = self.nats_replicas;
        config.namespace = self.nats_namespace.clone();
        config.duplicate_window = std::time::Duration::from_secs(self.nats_duplicate_window);
        config.request_timeout = std::time::Duration::from_secs(self.nats_timeout);
        config.connect_timeout = std::time::Duration::from_secs(self.nats_timeout);
        config
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// The event log: durable appends with 1, 16 and 256 writers, batches of 100, replay.
    Eventstore,
    /// The read models: rebuilding 1,000,000 events into SQLite (and PostgreSQL with
    /// --database-url) beside a raw bulk insert of the final rows; Installed and sync-logs
    /// query latencies.
    Projections,
    /// Syncing: full syncs of 100,000 contacts from a fake HubSpot in its own process, end to
    /// end, beside a raw loop fetching the same pages; the same with nothing changed; the
    /// peak memory of a process syncing 1,000,000.
    Sync,
    /// The HTTP API with the server in its own process: GET Installed (a page of 50 of 10,000
    /// integrations) and POST …/sync from 64 connections, beside the same query straight on
    /// SQLite and the same appends straight on sled.
    Gateway,
    /// 10,000 HubSpot integrations scheduled every 5 minutes, the server in its own process,
    /// measured for --minutes (12) once each has had its first run: schedule lag, runs/s,
    /// Installed and /metrics p99, CPU per idle run, peak memory, what storage grows by per
    /// integration-day. On the embedded default, or with --backend jetstream (--nats-url) and
    /// --database-url on JetStream + PostgreSQL.
    Scale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sled,
    /// A running JetStream server (--nats-url); the run uses streams of its own and deletes
    /// them afterwards.
    Jetstream,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    pub suite: Suite,
    /// Print one JSON object and nothing else on standard output.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value = "sled")]
    pub backend: Backend,
    /// Where to put the benchmark's scratch data (a fresh temporary directory inside it);
    /// use a directory on the disk you want measured.
    #[arg(long, env = "HARMONY_BENCH_DIR")]
    pub dir: Option<PathBuf>,
    /// The JetStream server to measure (with --backend jetstream); a cluster's servers
    /// comma-separated.
    #[arg(long, env = "HARMONY_NATS_URL", required_if_eq("backend", "jetstream"))]
    pub nats_url: Option<String>,
    /// Replicas of the benchmark's streams (with --backend jetstream): 3 on a cluster.
    #[arg(long, env = "HARMONY_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// The PostgreSQL server to measure the read models on as well (projections suite; the
    /// run works in schemas of its own and drops them afterwards), or to run the scale suite
    /// on with --backend jetstream (in a database of its own, dropped afterwards).
    #[arg(long, env = "HARMONY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A fraction of the work: for a smoke test, not for figures.
    #[arg(long)]
    pub quick: bool,
    /// How long the scale suite measures, in minutes (12; 1 with --quick).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// The sync suite's memory measurement runs in a process of its own, started with this
    /// (the fake provider's base URL).
    #[arg(long, hide = true, requires = "rss_child_records")]
    pub rss_child_api: Option<String>,
    #[arg(long, hide = true)]
    pub rss_child_records: Option<u64>,
}
