//! What every request handler may reach ([`AppState`]) and the workers of one process.

use std::sync::Arc;

use command::checkpoints::Checkpoints;
use eventstore::{EventStore, RecordLog};

use crate::settings::{Backend, Settings};
use crate::supervise::{supervise, until_ended};
use crate::{limits, metrics, pages};

/// Everything a request handler may reach, behind one `Arc`: every layer and extractor of
/// every request clones it, so a clone is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles an [`AppState`] shares.
pub struct Shared {
    pub store: Arc<dyn EventStore>,
    /// Synced record changes, beside the event log on the same backend.
    pub records: Arc<dyn RecordLog>,
    /// The run-detail log, and how long it keeps detail.
    pub detail: Arc<dyn eventstore::RunDetailLog>,
    pub run_detail_retention: std::time::Duration,
    pub backend: Backend,
    /// The service database: the read models (Installed, the sync logs) and what the service
    /// keeps and cannot derive (the vault, tokens, sessions, leases, idempotency keys).
    pub db: database::ServiceDb,
    /// What each projection's runner in this process is doing.
    pub runners: Runners,
    /// The credential vault.
    pub vault: Arc<adapters::vault::Vault>,
    /// What commands and connection flows go through.
    pub services: Services,
    /// The workers that react to the log: syncs, Companion actions, the scheduler.
    pub workers: Workers,
    /// Turns true when the service begins to shut down: open event streams end then, so that
    /// in-flight requests can finish.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The live tokens this process has looked up.
    pub(crate) tokens: crate::tokens::TokenCache,
    /// The per-token rate limit, if any.
    pub(crate) limiter: Option<limits::Limiter>,
    /// The event streams each token holds open.
    pub(crate) streams: Arc<limits::PerToken>,
    /// The reads each token has waiting for the read models (`Harmony-Min-Position`).
    pub(crate) waiting: Arc<limits::PerToken>,
    /// What `/metrics` reports.
    pub(crate) metrics: metrics::Metrics,
    /// Where `/metrics` is served, and to whom.
    pub(crate) metrics_settings: crate::settings::MetricsSettings,
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
    pub scheduler: crate::scheduler::Scheduler,
}

/// What the API, the console and the workers act through: commands on the log, the
/// connection flows, credentials and the provider clients. None of them is a worker.
#[derive(Clone)]
pub struct Services {
    /// Load, decide, append: every command on the log.
    pub repository: Arc<command::repository::Repository>,
    /// Connect, reauth, test and disconnect.
    pub connections: adapters::connections::Connections,
    /// Credentials read from the vault, refreshed single-flight.
    pub credentials: Arc<adapters::credentials::CredentialService>,
    /// The provider clients.
    pub providers: adapters::providers::Providers,
    /// The leases of this process: a sync request asks whether a worker holds its run.
    pub leases: database::lease::Leases,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    /// The services over a service's log, database and vault, as `settings` configure them.
    pub fn new(
        store: Arc<dyn EventStore>,
        db: &database::ServiceDb,
        vault: Arc<adapters::vault::Vault>,
        settings: &Settings,
        redirect: url::Url,
    ) -> Self {
        use adapters::http::{ProviderHttp, RetryPolicy};
        let repository = Arc::new(command::repository::Repository::new(store));
        let config = &settings.adapters;
        let outbound = adapters::outbound::Outbound::new(
            settings.outbound.clone(),
            config.trusted_endpoints(),
        );
        let http = ProviderHttp::new(outbound.clone(), RetryPolicy::default());
        let providers = adapters::providers::Providers::new(&config.endpoints, &http);
        let leases =
            database::lease::Leases::new(db.clone(), database::lease::Leases::process_holder());
        let credentials = Arc::new(adapters::credentials::CredentialService::new(
            repository.clone(),
            vault.clone(),
            leases.clone(),
            config.oauth.clone(),
            outbound.trusted().clone(),
            redirect.clone(),
        ));
        let connections = adapters::connections::Connections::new(
            repository.clone(),
            db.clone(),
            vault,
            providers.clone(),
            config.oauth.clone(),
            config.unavailable.clone(),
            outbound.trusted().clone(),
            redirect,
        );
        Self {
            repository,
            connections,
            credentials,
            providers,
            leases,
        }
    }
}

impl Workers {
    /// The workers over a service's log, database and vault, acting through `services`, as
    /// `settings` configure them.
    pub fn new(
        services: &Services,
        logs: adapters::sync::RunLogs,
        db: &database::ServiceDb,
        vault: Arc<adapters::vault::Vault>,
        settings: &Settings,
    ) -> Self {
        let leases =
            database::lease::Leases::new(db.clone(), database::lease::Leases::process_holder());
        let sync = adapters::sync::SyncWorker::new(
            services.repository.clone(),
            logs,
            db.clone(),
            services.credentials.clone(),
            services.providers.clone(),
            leases.clone(),
            adapters::sync::SyncConfig {
                lease_ttl: settings.sync.lease,
                max_concurrent_runs: settings.sync.concurrent_runs,
            },
        );
        let actions = adapters::actions::ActionWorker::new(
            services.repository.clone(),
            db.clone(),
            vault,
            services.credentials.clone(),
            services.providers.clone(),
            leases.clone(),
        );
        let scheduler = crate::scheduler::Scheduler::new(
            services.repository.clone(),
            db.clone(),
            leases,
            settings.schedule_tick,
        );
        Self {
            sync,
            actions,
            scheduler,
        }
    }

    /// Runs every worker until the returned handles are aborted; a worker that stops (its
    /// log subscription failed or ended) starts again a second later.
    pub(crate) fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
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

/// What each projection's runner in this process is doing, by projection name.
pub type Runners = Arc<
    std::sync::Mutex<std::collections::BTreeMap<&'static str, projections::runner::RunnerState>>,
>;

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}
