//! `harmony bench gateway`: the HTTP API under load, with the server in a process of its own
//! (`harmony serve` on the embedded default) and the load from this one: 64 connections in a
//! closed loop asking for a page of 50 of Installed among 10,000 integrations, then asking for
//! full syncs of random integrations. Beside each, measured in the same run, the raw engine
//! doing that request's core work: the same Installed query straight on the SQLite read model,
//! and the same one-event appends straight on a sled log.
//!
//! Also beside them: a minimal axum handler under the same load generator, the machine's
//! HTTP ceiling, which `get_installed_rps` is reported against; the same handler appending
//! the POST's one event straight on a sled log (`http_append_rps`: HTTP and the raw append,
//! nothing else — the ceiling of any write API here); and the audit export of a
//! workspace holding 1% of the log's events, against reading the whole log (what an export
//! cost before the workspace index).
//!
//! The server runs with `--no-workers`: the figure is the API's, and the syncs themselves are
//! `harmony bench sync`'s. Its token is created `--unlimited`, so the rate limit stays out of
//! the measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{machine, percentile_ms, Figure, Report};
use anyhow::Context;
use domain::catalog::AppScope;
use domain::integration::ConnectIntegration;
use domain::{
    Aggregate, Caller, CommandContext, CredentialRef, Integration, IntegrationCommand,
    IntegrationId, Principal, Role, StreamName, Timestamp,
};
use eventstore::{EventStore, ExpectedVersion, NewEvent, SledEventStore};
use futures::StreamExt;
use rand::Rng;
use secrecy::ExposeSecret;

/// How much work the suite does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Integrations in the workspace whose Installed is read.
    pub integrations: usize,
    /// Integrations of another workspace, each asked to sync once: every request appends
    /// (a second request for an integration whose sync is still queued only joins it).
    pub sync_targets: usize,
    /// How long each load runs (after a warm-up of a fifth of it).
    pub phase: Duration,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        integrations: 10_000,
        sync_targets: 100_000,
        phase: Duration::from_secs(5),
    };
    /// A smoke test, not figures.
    pub const QUICK: Sizes = Sizes {
        integrations: 500,
        sync_targets: 20_000,
        phase: Duration::from_millis(500),
    };
}

const CONNECTIONS: usize = 64;
const WORKSPACE: &str = "bench";
const SYNC_WORKSPACE: &str = "bench-sync";
/// A workspace holding 1% of the log's events, for the audit export.
const SMALL_WORKSPACE: &str = "bench-small";

fn admin(workspace: &str, at: Timestamp) -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: "ada".parse().expect("a valid user id"),
            workspace: workspace.parse().expect("a valid workspace id"),
            role: Role::Admin,
        }),
        at,
    )
}

/// Writes `count` connected HubSpot integrations of `workspace` into `store` (a synthetic
/// workspace: the one-per-app slot of a real one is left out).
async fn seed(
    store: &Arc<SledEventStore>,
    workspace: &'static str,
    count: usize,
) -> anyhow::Result<Vec<IntegrationId>> {
    let ids: Vec<IntegrationId> = (0..count).map(|_| IntegrationId::new()).collect();
    let appended = futures::stream::iter(ids.iter().copied().enumerate())
        .map(|(n, id)| {
            let store = store.clone();
            async move {
                let context = admin(workspace, Timestamp::now());
                let command = IntegrationCommand::Connect(ConnectIntegration {
                    integration: id,
                    app: "hubspot".into(),
                    scope: AppScope::Workspace,
                    setup: Default::default(),
                    granted_scopes: vec!["crm.objects.contacts.read".into()],
                    account_label: Some(format!("portal {n}")),
                    credential_ref: CredentialRef(format!("vault:{id}:1")),
                    token_expires_at: None,
                });
                let state = Integration::default();
                let metadata = state.metadata_for(&command, &context);
                let events: Vec<NewEvent> = state
                    .handle(&command, &context)?
                    .iter()
                    .map(|event| NewEvent::from_domain(event, metadata.clone()))
                    .collect();
                store
                    .append(
                        &StreamName::integration(id),
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONNECTIONS)
        .collect::<Vec<_>>()
        .await;
    appended.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(ids)
}

/// Runs `request` from `CONNECTIONS` tasks in a closed loop: a warm-up, then `phase` measured.
/// Returns requests a second and the sorted latencies.
async fn closed_loop<F, Fut>(phase: Duration, request: F) -> anyhow::Result<(f64, Vec<Duration>)>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let warm_until = Instant::now() + phase / 5;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                while Instant::now() < warm_until {
                    request().await?;
                }
                let stop = warm_until + phase;
                let mut latencies = Vec::new();
                loop {
                    let started = Instant::now();
                    if started >= stop {
                        return anyhow::Ok(latencies);
                    }
                    request().await?;
                    latencies.push(started.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("a load task panicked")??);
    }
    all.sort_unstable();
    Ok((all.len() as f64 / phase.as_secs_f64(), all))
}

/// The least an axum server can do for a request — route it and answer a small JSON body — on a
/// runtime of its own with as many workers as the service's: the HTTP ceiling of the machine
/// under the same load generator. Its second route appends one event to a sled log of its own
/// and answers: the ceiling of any write API on this machine, HTTP plus the raw append and
/// nothing else.
struct MinimalServer {
    url: String,
    append_url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MinimalServer {
    async fn start(log: &std::path::Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("while starting the minimal server's runtime")?;
        let listener = runtime
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await??;
        let address = listener.local_addr()?;
        let store = Arc::new(SledEventStore::open(log)?);
        let app = axum::Router::new()
            .route(
                "/minimal",
                axum::routing::get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
            )
            .route(
                "/append/{id}",
                axum::routing::post(
                    move |axum::extract::Path(id): axum::extract::Path<IntegrationId>| {
                        let store = store.clone();
                        async move {
                            match append_sync_requested(&store, id).await {
                                Ok(()) => (
                                    axum::http::StatusCode::ACCEPTED,
                                    axum::Json(serde_json::json!({ "ok": true })),
                                ),
                                Err(error) => (
                                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                                    axum::Json(serde_json::json!({ "error": error.to_string() })),
                                ),
                            }
                        }
                    },
                ),
            );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url: format!("http://{address}/minimal"),
            append_url: format!("http://{address}/append"),
            runtime: Some(runtime),
        })
    }
}

/// The one event a sync request appends, straight on `store`: the raw engine's part of
/// `POST …/sync`.
async fn append_sync_requested(store: &SledEventStore, id: IntegrationId) -> anyhow::Result<()> {
    let user: domain::UserId = "ada".parse().expect("a valid user id");
    let event = NewEvent::from_domain(
        &domain::IntegrationEvent::SyncRequested(domain::integration::SyncRequested {
            follow_up: false,
            sync_id: domain::SyncId::new(),
            kind: domain::integration::SyncKind::Full,
            trigger: domain::integration::SyncTrigger::Manual { user: user.clone() },
        }),
        domain::Metadata {
            workspace: SYNC_WORKSPACE.parse().expect("a valid workspace id"),
            owner: None,
            actor: domain::Actor::User(user),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: None,
            occurred_at: Timestamp::now(),
        },
    );
    store
        .append(
            &StreamName::integration(id),
            ExpectedVersion::Any,
            vec![event],
        )
        .await?;
    Ok(())
}

impl Drop for MinimalServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `harmony serve` on `data_dir`, in its own process; killed when dropped.
pub(crate) struct Server {
    pub(crate) child: tokio::process::Child,
    pub(crate) base: String,
}

impl Server {
    /// The API alone: no workers.
    async fn start(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, &["--no-workers".to_owned()]).await
    }

    /// The service with `args` besides its data directory and a free port.
    pub(crate) async fn start_with(
        data_dir: &std::path::Path,
        args: &[String],
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().context("while finding the harmony binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .args(["--checkpoint-seconds", "3600"])
            .env("HARMONY_LOG", "info")
            .env_remove("HARMONY_NATS_URL")
            .env_remove("HARMONY_DATABASE_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("while starting the server")?;
        let stderr = child.stderr.take().context("the server's log")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next_line()
                .await?
                .context("the server exited before it listened")?;
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on ".len()..];
                break rest
                    .split_whitespace()
                    .next()
                    .context("the server's address")?
                    .to_owned();
            }
        };
        // Keep reading its log, so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, base })
    }

    /// Waits until each of `projections` has applied the whole log, as `/healthz` says;
    /// returns the position the first of them stands at.
    pub(crate) async fn caught_up(
        &self,
        client: &reqwest::Client,
        projections: &[&str],
        within: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let health: serde_json::Value = client
                .get(format!("{}/healthz", self.base))
                .send()
                .await?
                .json()
                .await?;
            if projections
                .iter()
                .all(|name| health["projections"][name]["lag_events"] == 0)
            {
                return Ok(health["projections"][projections[0]]["position"]
                    .as_u64()
                    .unwrap_or(0));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the read models did not catch up within {} s",
                within.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn run(
    scratch: &std::path::Path,
    sizes: Sizes,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    let data_dir = scratch.join("service");
    std::fs::create_dir_all(&data_dir)?;
    progress(&format!(
        "writing {} integrations into the log",
        sizes.integrations
    ));
    let store = Arc::new(SledEventStore::open(data_dir.join("log"))?);
    seed(&store, WORKSPACE, sizes.integrations).await?;
    progress(&format!(
        "writing {} integrations to sync into the log",
        sizes.sync_targets
    ));
    let targets = Arc::new(seed(&store, SYNC_WORKSPACE, sizes.sync_targets).await?);
    let small = (sizes.integrations + sizes.sync_targets) / 99;
    progress(&format!(
        "writing {small} integrations of a workspace holding 1% of the log"
    ));
    seed(&store, SMALL_WORKSPACE, small).await?;
    progress("reading the whole log, as an export did before the workspace index");
    let mut whole_log = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut from = 1;
        loop {
            let page = store.read_all(from, 1000).await?;
            let Some(last) = page.last().map(|event| event.position) else {
                break;
            };
            from = last + 1;
        }
        whole_log.push(started.elapsed());
    }
    whole_log.sort_unstable();
    drop(store);
    let read = gateway::open_service_db(None, &data_dir).await?;
    let token = |workspace: &str| {
        let read = read.clone();
        let workspace = workspace.to_owned();
        async move {
            let issued = gateway::tokens::create(
                &read,
                &workspace.parse().expect("a valid workspace id"),
                &"ada".parse().expect("a valid user id"),
                Role::Admin,
                "bench",
                true,
            )
            .await?;
            anyhow::Ok(issued.token.expose_secret().to_owned())
        }
    };
    let sync_token = token(SYNC_WORKSPACE).await?;
    let small_token = token(SMALL_WORKSPACE).await?;
    let token = token(WORKSPACE).await?;

    progress("starting the server in its own process");
    let mut server = Server::start(&data_dir).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()?;
    let installed = format!(
        "{}/v1/workspaces/{WORKSPACE}/integrations?limit=50",
        server.base
    );
    server
        .caught_up(
            &client,
            &["installed", "sync_runs"],
            Duration::from_secs(120),
        )
        .await?;
    let first: serde_json::Value = client
        .get(&installed)
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        first["integrations"].as_array().map(Vec::len) == Some(50),
        "Installed does not answer a page of 50: {first}"
    );

    progress("a minimal axum handler over HTTP: the machine's ceiling");
    let ceiling = MinimalServer::start(&scratch.join("minimal-log")).await?;
    let (ceiling_rps, _) = closed_loop(sizes.phase, {
        let client = client.clone();
        let token = token.clone();
        let url = ceiling.url.clone();
        move || {
            let (client, token, url) = (client.clone(), token.clone(), url.clone());
            async move {
                let response = client.get(&url).bearer_auth(&token).send().await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "GET minimal: {}",
                    response.status()
                );
                response.bytes().await?;
                Ok(())
            }
        }
    })
    .await?;

    progress("the small workspace's audit export over HTTP");
    let mut exports = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let response = client
            .get(format!(
                "{}/v1/workspaces/{SMALL_WORKSPACE}/audit/export",
                server.base
            ))
            .bearer_auth(&small_token)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "export: {}", response.status());
        let body = response.bytes().await?;
        exports.push(started.elapsed());
        let lines = body.iter().filter(|b| **b == b'\n').count();
        anyhow::ensure!(
            lines == small,
            "the export holds {lines} events, not the workspace's {small}"
        );
    }
    exports.sort_unstable();

    progress("the Installed query straight on SQLite");
    let (raw_get, _) = closed_loop(sizes.phase, {
        let read = read.clone();
        move || {
            let read = read.clone();
            async move {
                projections::installed::page(
                    &read,
                    WORKSPACE,
                    "ada",
                    &projections::installed::Filter::default(),
                    None,
                    50,
                )
                .await?;
                anyhow::Ok(())
            }
        }
    })
    .await?;

    progress("GET Installed over HTTP");
    let (get_rps, get_latencies) = closed_loop(sizes.phase, {
        let client = client.clone();
        let token = token.clone();
        move || {
            let (client, token, url) = (client.clone(), token.clone(), installed.clone());
            async move {
                let response = client.get(&url).bearer_auth(&token).send().await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "GET Installed: {}",
                    response.status()
                );
                response.bytes().await?;
                Ok(())
            }
        }
    })
    .await?;

    progress("one-event appends straight on sled");
    let raw_store = Arc::new(SledEventStore::open(scratch.join("raw-log"))?);
    let (raw_append, _) = closed_loop(sizes.phase, {
        let ids = targets.clone();
        move || {
            let (store, ids) = (raw_store.clone(), ids.clone());
            async move {
                let id = ids[rand::rng().random_range(0..ids.len())];
                append_sync_requested(&store, id).await
            }
        }
    })
    .await?;

    progress("the minimal handler appending the same event over HTTP: a write API's ceiling");
    let (http_append, _) = closed_loop(sizes.phase, {
        let (client, ids, url) = (client.clone(), targets.clone(), ceiling.append_url.clone());
        move || {
            let (client, ids, url) = (client.clone(), ids.clone(), url.clone());
            async move {
                let id = ids[rand::rng().random_range(0..ids.len())];
                let response = client.post(format!("{url}/{id}")).send().await?;
                anyhow::ensure!(
                    response.status() == 202,
                    "POST minimal append: {}",
                    response.status()
                );
                response.bytes().await?;
                Ok(())
            }
        }
    })
    .await?;
    drop(ceiling);

    progress("POST …/sync over HTTP");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let coalesced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (post_rps, post_latencies) = closed_loop(sizes.phase, {
        let base = server.base.clone();
        let coalesced = coalesced.clone();
        move || {
            let (client, token, ids, base) = (
                client.clone(),
                sync_token.clone(),
                targets.clone(),
                base.clone(),
            );
            let (next, coalesced) = (next.clone(), coalesced.clone());
            async move {
                // Each integration once, in turn (again only once all have been asked).
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = ids[n % ids.len()];
                let response = client
                    .post(format!(
                        "{base}/v1/workspaces/{SYNC_WORKSPACE}/integrations/{id}/sync"
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 202, "POST sync: {}", response.status());
                let body = response.bytes().await?;
                if body.windows(16).any(|w| w == b"\"coalesced\":true") {
                    coalesced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
        }
    })
    .await?;
    let coalesced = coalesced.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        coalesced == 0,
        "{coalesced} sync requests joined a queued one: more integrations to sync are needed"
    );
    let _ = server.child.kill().await;
    read.close().await;

    Ok(Report {
        suite: "gateway".into(),
        backend: "sled".into(),
        machine: machine(),
        figures: vec![
            Figure::against_raw("get_installed_rps", get_rps, "requests/s", ceiling_rps),
            Figure::alone("installed_query_rps", raw_get, "queries/s"),
            Figure::alone(
                "get_installed_p50_ms",
                percentile_ms(&get_latencies, 0.50),
                "ms",
            ),
            Figure::alone(
                "get_installed_p99_ms",
                percentile_ms(&get_latencies, 0.99),
                "ms",
            ),
            Figure::against_raw("post_sync_rps", post_rps, "requests/s", raw_append),
            Figure::against_raw("http_append_rps", http_append, "requests/s", raw_append),
            Figure::against_raw(
                "export_small_workspace_ms",
                percentile_ms(&exports, 0.50),
                "ms",
                percentile_ms(&whole_log, 0.50),
            ),
            Figure::alone(
                "post_sync_p50_ms",
                percentile_ms(&post_latencies, 0.50),
                "ms",
            ),
            Figure::alone(
                "post_sync_p99_ms",
                percentile_ms(&post_latencies, 0.99),
                "ms",
            ),
        ],
    })
}
