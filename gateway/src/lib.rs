//! The gateway of Harmony Sync and the `harmony` binary's commands.
//!
//! `main.rs` only parses the command line; everything it runs lives here:
//! [`Application`] opens the event log, the read models, the credential vault and the
//! checkpoint log, runs the projections, the workers and the checkpoint signer, and serves
//! HTTP — the Marketplace API under `/v1`, the admin console under `/console`, `/healthz`,
//! `/readyz`, `/metrics` and `/openapi.json`. [`cli`] holds the command lines (`serve`,
//! `history`, `verify`, `export`, `tokens`, `bench`, `log copy`, `projections rebuild`,
//! `vault rotate-master-key`); [`commands`] runs them, except `tokens`, which [`tokens`] runs.

mod api;
pub mod cli;
pub mod commands;
mod console;
mod cookies;
mod http;
mod idempotency;
pub mod limits;
mod metrics;
mod pages;
mod problem;
mod service;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use eventstore::checkpoints::Checkpoints;
use eventstore::{
    EventStore, JetStreamConfig, JetStreamEventStore, JetStreamRecordLog, RecordLog,
    SledEventStore, SledRecordLog,
};

/// How long the embedded records log keeps synced record changes (personal data).
pub const RECORDS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
use tokio::net::TcpListener;

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
}

impl Settings {
    /// The embedded default under `data_dir`: sled, SQLite, no OAuth clients, on a free port.
    pub fn embedded(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jetstream: None,
            records_max_age: RECORDS_MAX_AGE,
            database_url: None,
            adapters: adapters::config::AdaptersConfig::default(),
            outbound: adapters::outbound::OutboundPolicy::default(),
            schedule_tick: std::time::Duration::from_secs(30),
            sync: SyncSettings::default(),
            rate_limit: limits::RateLimit::new(50, 200),
            max_streams_per_token: 8,
            checkpoint_every: std::time::Duration::from_secs(60),
            run_workers: true,
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
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            lease: std::time::Duration::from_secs(30),
            work_ack_wait: std::time::Duration::from_secs(30),
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

/// Everything a request handler may reach: one `Clone` struct of shared handles.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    /// Synced record changes, beside the event log on the same backend.
    pub records: Arc<dyn RecordLog>,
    pub backend: Backend,
    /// The read models (Installed, the sync logs).
    pub read: database::ReadDb,
    /// What each projection's runner in this process is doing.
    pub runners: Runners,
    /// The credential vault.
    pub vault: Arc<adapters::vault::Vault>,
    /// The workers that react to the log: syncs, Companion actions, the scheduler.
    pub workers: Workers,
    /// Turns true when the service begins to shut down: open event streams end then, so that
    /// in-flight requests can finish.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The per-token rate limit, if any.
    pub(crate) limiter: Option<limits::Limiter>,
    /// The event streams each token holds open.
    pub(crate) streams: Arc<limits::Streams>,
    /// What `/metrics` reports.
    pub(crate) metrics: metrics::Metrics,
    /// The signed checkpoints of the log, and the key that signs them.
    pub checkpoints: Checkpoints,
    /// Installed pages answered at the read model's current checkpoint.
    pub(crate) installed_pages: Arc<pages::PageCache>,
    /// Cookies carry `Secure`: the public base URL is https.
    pub(crate) secure_cookies: bool,
    /// The `Content-Security-Policy` of every page and answer.
    pub(crate) content_security_policy: axum::http::HeaderValue,
}

/// The workers of one process.
#[derive(Clone, Debug)]
pub struct Workers {
    pub sync: adapters::sync::SyncWorker,
    pub actions: adapters::actions::ActionWorker,
    pub scheduler: adapters::scheduler::Scheduler,
    pub credentials: Arc<adapters::credentials::CredentialService>,
    pub providers: adapters::providers::Providers,
    /// Connect, reauth, test and disconnect.
    pub connections: adapters::connections::Connections,
    /// Commands on the log, for the API's actions.
    pub repo: Arc<eventstore::repository::Repository>,
}

impl Workers {
    /// The workers over a service's log, read models and vault, as `settings` configure them.
    pub fn new(
        store: Arc<dyn EventStore>,
        records: Arc<dyn RecordLog>,
        read: &database::ReadDb,
        vault: Arc<adapters::vault::Vault>,
        settings: &Settings,
        redirect: url::Url,
    ) -> Self {
        use adapters::http::{ProviderHttp, RetryPolicy};
        let repo = Arc::new(eventstore::repository::Repository::new(store));
        let repo_for_api = repo.clone();
        let config = &settings.adapters;
        let outbound = adapters::outbound::Outbound::new(
            settings.outbound.clone(),
            config.trusted_endpoints(),
        );
        let http = ProviderHttp::new(outbound.clone(), RetryPolicy::default());
        let providers = adapters::providers::Providers::new(&config.endpoints, &http);
        let leases =
            adapters::lease::Leases::new(read.clone(), adapters::lease::Leases::process_holder());
        let credentials = Arc::new(adapters::credentials::CredentialService::new(
            repo.clone(),
            vault.clone(),
            leases.clone(),
            config.oauth.clone(),
            outbound.trusted().clone(),
            redirect.clone(),
        ));
        let connections = adapters::connections::Connections::new(
            repo.clone(),
            read.clone(),
            vault.clone(),
            providers.clone(),
            config.oauth.clone(),
            config.unavailable.clone(),
            outbound.trusted().clone(),
            redirect,
        );
        let sync = adapters::sync::SyncWorker::new(
            repo.clone(),
            records,
            read.clone(),
            credentials.clone(),
            providers.clone(),
            leases.clone(),
            adapters::sync::SyncConfig {
                lease_ttl: settings.sync.lease,
                ..adapters::sync::SyncConfig::default()
            },
        );
        let actions = adapters::actions::ActionWorker::new(
            repo.clone(),
            read.clone(),
            vault.clone(),
            credentials.clone(),
            providers.clone(),
            leases.clone(),
        );
        let scheduler =
            adapters::scheduler::Scheduler::new(repo, read.clone(), leases, settings.schedule_tick);
        Self {
            sync,
            actions,
            scheduler,
            credentials,
            providers,
            connections,
            repo: repo_for_api,
        }
    }

    /// Runs every worker until the returned handles are aborted; a worker that stops (its
    /// log subscription failed or ended) starts again a second later.
    fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let scheduler = self.scheduler.clone();
        let mut tasks = vec![
            supervise("the sync worker", {
                let sync = self.sync.clone();
                move || {
                    let sync = sync.clone();
                    async move { until_ended(sync.follow().await) }
                }
            }),
            supervise("the action worker", {
                let actions = self.actions.clone();
                move || {
                    let actions = actions.clone();
                    async move { until_ended(actions.follow().await) }
                }
            }),
            tokio::spawn(async move { scheduler.run().await }),
        ];
        if self.sync.has_queue() {
            tasks.push(supervise("taking sync work", {
                let sync = self.sync.clone();
                move || {
                    let sync = sync.clone();
                    async move { until_ended(sync.take_work().await) }
                }
            }));
        }
        tasks
    }
}

/// Runs `task` for as long as the service runs: when it fails, the failure is logged and the
/// task starts again a second later (the log or the database away for a while, say); when it
/// finishes, it is done.
fn supervise<F, Fut, E>(name: &'static str, mut task: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display + Send,
{
    tokio::spawn(async move {
        while let Err(error) = task().await {
            tracing::warn!(task = name, %error, "stopped; starting again in a second");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

/// A worker that follows the log runs for as long as the service does: its end is a failure
/// to start again from.
fn until_ended<E: std::fmt::Display>(outcome: Result<(), E>) -> Result<(), String> {
    match outcome {
        Ok(()) => Err("its subscription to the log ended".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// What each projection's runner in this process is doing, by projection name.
pub type Runners = Arc<
    std::sync::Mutex<std::collections::BTreeMap<&'static str, projections::runner::RunnerState>>,
>;

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// The two logs of a service: the event log and the records, on one backend.
pub struct Logs {
    pub store: Arc<dyn EventStore>,
    pub records: Arc<dyn RecordLog>,
    pub backend: Backend,
    /// The JetStream store itself when the log is there, for the work queues beside it.
    pub jetstream: Option<JetStreamEventStore>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Opens the event log and the records: on JetStream when `jetstream` is given, else on sled
/// under `data_dir` (`log/` and `records/`, created if missing).
pub async fn open_logs(
    jetstream: Option<JetStreamConfig>,
    data_dir: &std::path::Path,
    records_max_age: std::time::Duration,
) -> anyhow::Result<Logs> {
    Ok(match jetstream {
        Some(config) => {
            let url = config.url.clone();
            let store = JetStreamEventStore::connect(config)
                .await
                .with_context(|| {
                    format!("while opening the event log on NATS JetStream at {url}")
                })?;
            let records = JetStreamRecordLog::open(&store)
                .await
                .with_context(|| format!("while opening the records on NATS JetStream at {url}"))?;
            Logs {
                store: Arc::new(store.clone()),
                records: Arc::new(records),
                backend: Backend::JetStream,
                jetstream: Some(store),
            }
        }
        None => {
            let log_dir = data_dir.join("log");
            let store = SledEventStore::open(&log_dir).with_context(|| {
                format!(
                    "while opening the event log in {} (is another process using it?)",
                    log_dir.display()
                )
            })?;
            let records_dir = data_dir.join("records");
            let records =
                SledRecordLog::open(&records_dir, records_max_age).with_context(|| {
                    format!("while opening the records in {}", records_dir.display())
                })?;
            Logs {
                store: Arc::new(store),
                records: Arc::new(records),
                backend: Backend::Sled,
                jetstream: None,
            }
        }
    })
}

/// Signs the heads of the streams that changed, every `every`, in one process at a time.
async fn sign_checkpoints(state: AppState, every: std::time::Duration) {
    let leases = adapters::lease::Leases::new(
        state.read.clone(),
        adapters::lease::Leases::process_holder(),
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match leases.try_acquire("checkpoints", every * 3).await {
            Ok(true) => match eventstore::checkpoints::sign_new(
                state.store.as_ref(),
                state.checkpoints.log.as_ref(),
                &state.checkpoints.key,
            )
            .await
            {
                Ok(0) => {}
                Ok(signed) => tracing::debug!(signed, "signed stream heads"),
                Err(error) => tracing::warn!(%error, "could not sign checkpoints; will retry"),
            },
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot take the checkpoint lease"),
        }
    }
}

/// Where the checkpoint key is kept under a data directory (unless `HARMONY_CHECKPOINT_KEY`
/// holds it).
pub fn checkpoint_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("checkpoint.key")
}

/// Opens the checkpoint log beside `logs` (`checkpoints/` under `data_dir`, or the
/// checkpoints stream on JetStream) and the key: from `key_file` when given, else the data
/// directory's (created when absent), unless `HARMONY_CHECKPOINT_KEY` holds it.
pub async fn open_checkpoints(
    logs: &Logs,
    data_dir: &std::path::Path,
    key_file: Option<&std::path::Path>,
) -> anyhow::Result<Checkpoints> {
    let log: Arc<dyn eventstore::checkpoints::CheckpointLog> = match &logs.jetstream {
        Some(jetstream) => Arc::new(
            eventstore::checkpoints::JetStreamCheckpointLog::open(jetstream)
                .await
                .context("while opening the checkpoint log on NATS JetStream")?,
        ),
        None => {
            let dir = data_dir.join("checkpoints");
            Arc::new(
                eventstore::checkpoints::SledCheckpointLog::open(&dir).with_context(|| {
                    format!("while opening the checkpoint log in {}", dir.display())
                })?,
            )
        }
    };
    let path = key_file.map_or_else(|| checkpoint_key_path(data_dir), std::path::Path::to_owned);
    let key = eventstore::checkpoints::CheckpointKey::load_or_create(&path)
        .map_err(|reason| anyhow::anyhow!("the checkpoint key: {reason}"))?;
    Ok(Checkpoints {
        log,
        key: Arc::new(key),
    })
}

/// Creates the data directory (and its parents) if missing, readable by its owner alone; an
/// existing one that others may enter is made private.
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .with_context(|| format!("while creating the data directory {}", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::info!(dir = %dir.display(), "making the data directory its owner's alone");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("while making {} private", dir.display()))?;
        }
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("while creating the data directory {}", dir.display()))?;
    Ok(())
}

/// Opens (and migrates) the read models: on PostgreSQL at `database_url` when given, else in
/// SQLite at `read.db` under `data_dir` (created readable by its owner alone; SQLite gives its
/// journal files the same mode).
pub async fn open_read_db(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<database::ReadDb> {
    Ok(match database_url {
        Some(url) => database::ReadDb::connect_postgres(url)
            .await
            .context("while opening the read models on PostgreSQL")?,
        None => {
            let path = data_dir.join("read.db");
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("while creating {}", path.display()))?;
            }
            database::ReadDb::open_sqlite(&path)
                .await
                .with_context(|| format!("while opening the read models in {}", path.display()))?
        }
    })
}

/// Where the master key file lives under a data directory (unless `HARMONY_MASTER_KEY` holds
/// the key).
pub fn master_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("master.key")
}

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    checkpoint_every: std::time::Duration,
    run_workers: bool,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Opens the log and binds the listener (port 0 picks a free one, as tests do).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        create_private_dir(&settings.data_dir)?;
        let logs = open_logs(
            settings.jetstream.clone(),
            &settings.data_dir,
            settings.records_max_age,
        )
        .await?;
        let checkpoints = open_checkpoints(&logs, &settings.data_dir, None).await?;
        let Logs {
            store,
            records,
            backend,
            jetstream,
        } = logs;
        let read = open_read_db(settings.database_url.as_deref(), &settings.data_dir).await?;
        let keys = adapters::vault::Keyring::load_or_create(&master_key_path(&settings.data_dir))
            .context("while opening the credential vault")?;
        let vault = Arc::new(adapters::vault::Vault::with_keyring(read.clone(), keys));
        // A process that cannot wrap under the vault's current key must not start.
        vault
            .current_key()
            .await
            .context("while opening the credential vault")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("while binding {}", settings.listen))?;
        let own = url::Url::parse(&format!("http://{}/", listener.local_addr()?))
            .context("while naming the service's own URL")?;
        let redirect = settings.adapters.redirect_uri(&own);
        let workers = Workers::new(
            store.clone(),
            records.clone(),
            &read,
            vault.clone(),
            &settings,
            redirect,
        );
        if let Some(jetstream) = &jetstream {
            let queue = eventstore::work_queue::WorkQueue::open(
                jetstream,
                "sync",
                settings.sync.work_ack_wait,
            )
            .await
            .context("while opening the sync work queue on NATS JetStream")?;
            workers.sync.use_queue(queue);
        }
        Ok(Self {
            listener,
            state: AppState {
                store,
                records,
                backend,
                read,
                runners: Runners::default(),
                vault,
                workers,
                closing: Arc::new(tokio::sync::watch::channel(false).0),
                limiter: settings.rate_limit.map(limits::Limiter::new),
                streams: Arc::new(limits::Streams::new(settings.max_streams_per_token)),
                metrics: metrics::Metrics::new(),
                checkpoints,
                installed_pages: Arc::default(),
                secure_cookies: settings
                    .adapters
                    .public_base_url
                    .as_ref()
                    .is_some_and(|url| url.scheme() == "https"),
                content_security_policy: http::content_security_policy(
                    &settings
                        .adapters
                        .oauth
                        .values()
                        .map(|client| client.authorize_url.clone())
                        .collect::<Vec<_>>(),
                ),
            },
            checkpoint_every: settings.checkpoint_every,
            run_workers: settings.run_workers,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The event log the service runs on.
    pub fn backend(&self) -> Backend {
        self.state.backend
    }

    pub fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let purger = purge_records_of_deleted_integrations(
            self.state.store.clone(),
            self.state.records.clone(),
            self.state.vault.clone(),
        );
        let projections: Vec<_> = projections::runner::Projection::ALL
            .into_iter()
            .map(|projection| {
                run_projection(
                    projection,
                    self.state.store.clone(),
                    self.state.read.clone(),
                    self.state.runners.clone(),
                )
            })
            .collect();
        let workers = if self.run_workers {
            self.state.workers.spawn()
        } else {
            tracing::info!("the sync worker, the action worker and the scheduler run elsewhere");
            Vec::new()
        };
        let forgetting = self.state.limiter.clone().map(|limiter| {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    every.tick().await;
                    limiter.forget_quiet();
                }
            })
        });
        let signer = tokio::spawn(sign_checkpoints(self.state.clone(), self.checkpoint_every));
        let last_signing = self.state.clone();
        let closing = self.state.closing.clone();
        let router = http::router(self.state);
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                closing.send_replace(true);
            })
            .await
            .context("while serving HTTP");
        // What changed since the last signing is signed on the way out.
        signer.abort();
        let _ = signer.await;
        if let Err(error) = eventstore::checkpoints::sign_new(
            last_signing.store.as_ref(),
            last_signing.checkpoints.log.as_ref(),
            &last_signing.checkpoints.key,
        )
        .await
        {
            tracing::warn!(%error, "could not sign the last checkpoints");
        }
        drop(last_signing);
        // A run stopped here resumes from its last cursor wherever the work is taken up next.
        let tasks = std::iter::once(purger)
            .chain(forgetting)
            .chain(projections)
            .chain(workers);
        for task in tasks {
            task.abort();
            // Awaited, so that whatever it held (the logs' file locks) is released on return.
            let _ = task.await;
        }
        served
    }
}

/// Keeps the records log free of deleted integrations' records, and the vault free of their
/// secrets, for as long as the service runs.
fn purge_records_of_deleted_integrations(
    store: Arc<dyn EventStore>,
    records: Arc<dyn RecordLog>,
    vault: Arc<adapters::vault::Vault>,
) -> tokio::task::JoinHandle<()> {
    supervise("purging deleted integrations", move || {
        let (store, records, vault) = (store.clone(), records.clone(), vault.clone());
        let shred = move |integration| {
            let vault = vault.clone();
            async move {
                vault
                    .shred(integration)
                    .await
                    .map(drop)
                    .map_err(|error| eventstore::StoreError::Unavailable(error.to_string()))
            }
        };
        eventstore::purge_deleted_integrations(store, records, shred)
    })
}

/// Keeps one read model up to date while the service runs — on PostgreSQL only while this
/// process holds its lease, waiting otherwise. An event it cannot apply stops that projection
/// (the others go on) with an error naming the position; anything else (the log or the
/// database away for a while, the lease lost) is retried.
fn run_projection(
    projection: projections::runner::Projection,
    store: Arc<dyn EventStore>,
    read: database::ReadDb,
    runners: Runners,
) -> tokio::task::JoinHandle<()> {
    use projections::installed::ApplyError;
    use projections::runner::{RunError, RunnerState};
    supervise(projection.name(), move || {
        let (store, read, runners) = (store.clone(), read.clone(), runners.clone());
        async move {
            let on_state = |state: RunnerState| {
                if let Ok(mut runners) = runners.lock() {
                    runners.insert(projection.name(), state);
                }
            };
            match projections::runner::run_leased(projection, store, read, &on_state).await {
                Err(RunError::Apply(error @ ApplyError::Undecodable { .. })) => {
                    on_state(RunnerState::Stopped);
                    tracing::error!(projection = projection.name(), %error, "projection stopped");
                    Ok(())
                }
                other => other,
            }
        }
    })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called,
/// not when the future is first polled: call it before announcing that the service listens,
/// so that a signal sent right after the announcement is never missed.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for {name}");
                None
            }
        };
        (
            install(SignalKind::terminate(), "SIGTERM"),
            install(SignalKind::interrupt(), "SIGINT"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut terminate, mut interrupt) = signals;
            async fn on(stream: &mut Option<tokio::signal::unix::Signal>) {
                match stream {
                    Some(stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = on(&mut terminate) => {},
                () = on(&mut interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down");
    }
}
