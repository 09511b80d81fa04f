//! [`Application`]: a built, bound service, run until stopped; and the signals that stop it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on an address of its own (`--metrics-listen`).
    metrics_listener: Option<TcpListener>,
    state: AppState,
    checkpoint_every: std::time::Duration,
    run_detail_retention: std::time::Duration,
    run_workers: bool,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

use crate::settings::{Backend, Settings};
use crate::state::{AppState, Runners, Services, Shared, Workers};
use crate::storage::{
    create_private_dir, master_key_path, open_checkpoints, open_logs, open_service_db, Logs,
};
use crate::tasks::{
    age_out_run_detail, purge_records_of_deleted_integrations, run_projection, sign_checkpoints,
};
use crate::{http, limits, metrics};

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
        let checkpoints = open_checkpoints(
            &logs,
            &settings.data_dir,
            None,
            settings.checkpoint_key.as_ref(),
        )
        .await?;
        let Logs {
            store,
            records,
            detail,
            backend,
            jetstream,
        } = logs;
        let db = open_service_db(settings.database_url.as_deref(), &settings.data_dir).await?;
        // Tokens found live are kept while no revocation is announced; only a SQLite database
        // (one machine) has the mark that announces them.
        let revocations = match db {
            database::ServiceDb::Sqlite(_) => Some(
                crate::tokens::RevocationMark::open(&settings.data_dir)
                    .context("while opening the token revocation mark")?,
            ),
            database::ServiceDb::Postgres(_) => None,
        };
        let keys = adapters::vault::Keyring::load_or_create(
            &master_key_path(&settings.data_dir),
            settings.master_key.as_ref(),
        )
        .context("while opening the credential vault")?;
        let vault = Arc::new(adapters::vault::Vault::with_keyring(db.clone(), keys));
        // A process that cannot wrap under the vault's current key must not start.
        vault
            .current_key()
            .await
            .context("while opening the credential vault")?;
        let listener = TcpListener::bind(settings.listen).await.with_context(|| {
            format!(
                "while binding {} (another address: --listen or HARMONY_LISTEN)",
                settings.listen
            )
        })?;
        let metrics_listener = match settings.metrics.listen {
            Some(address) => Some(TcpListener::bind(address).await.with_context(|| {
                format!("while binding {address} for the metrics (--metrics-listen)")
            })?),
            None => None,
        };
        let own = url::Url::parse(&format!("http://{}/", listener.local_addr()?))
            .context("while naming the service's own URL")?;
        let redirect = settings.adapters.redirect_uri(&own);
        let services = Services::new(store.clone(), &db, vault.clone(), &settings, redirect);
        let run_logs = adapters::sync::RunLogs {
            records: records.clone(),
            detail: detail.clone(),
        };
        let workers = Workers::new(&services, run_logs, &db, vault.clone(), &settings);
        if let Some(jetstream) = &jetstream {
            let queue = command::work_queue::WorkQueue::open(
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
            metrics_listener,
            state: AppState::new(Shared {
                store,
                records,
                detail,
                run_detail_retention: settings.run_detail_retention,
                backend,
                db,
                runners: Runners::default(),
                vault,
                services,
                workers,
                closing: Arc::new(tokio::sync::watch::channel(false).0),
                tokens: crate::tokens::TokenCache::new(revocations),
                limiter: settings.rate_limit.map(limits::Limiter::new),
                streams: Arc::new(limits::PerToken::new(settings.max_streams_per_token)),
                waiting: Arc::new(limits::PerToken::new(
                    crate::consistency::MAX_WAITING_PER_TOKEN,
                )),
                metrics: metrics::Metrics::new(),
                metrics_settings: settings.metrics.clone(),
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
            }),
            checkpoint_every: settings.checkpoint_every,
            run_detail_retention: settings.run_detail_retention,
            run_workers: settings.run_workers,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served on an address of its own (`--metrics-listen`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
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
                    self.state.db.clone(),
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
        let compactor = tokio::spawn(age_out_run_detail(
            self.state.clone(),
            self.run_detail_retention,
        ));
        let last_signing = self.state.clone();
        let closing = self.state.closing.clone();
        let metrics_served = self.metrics_listener.map(|listener| {
            let router = metrics::own_router(self.state.clone());
            let mut closed = closing.subscribe();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = closed.wait_for(|closing| *closing).await;
                };
                if let Err(error) = axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::warn!(%error, "the metrics address stopped serving");
                }
            })
        });
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
        if let Err(error) = command::checkpoints::sign_new(
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
        let tasks = [purger, compactor]
            .into_iter()
            .chain(metrics_served)
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
