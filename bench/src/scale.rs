//! `harmony bench scale`: thousands of integrations on one machine. `harmony serve` runs in a
//! process of its own on the embedded default (sled + SQLite), with as many HubSpot
//! integrations as asked for (10,000), each scheduled every 5 minutes against a fake HubSpot in
//! a process of its own. The integrations were "connected" over the five minutes before the
//! service starts, so their runs come due spread out, as they would in a service that has run
//! for a while; the fake's records change at 1% an hour (mostly, runs find nothing).
//!
//! Over the measured window it reports:
//! - `schedule_lag_p50_s`, `schedule_lag_p99_s`: from when a run was due (its schedule's
//!   period after the last run ended) to when it started (its end less its duration); a run
//!   still waiting at the end counts until then;
//! - `runs_per_s`: runs ended, per second (the schedule asks for integrations / 300);
//! - `installed_p99_ms`: `GET …/integrations` of a workspace (a page of 50), sampled;
//! - `metrics_scrape_p99_ms`: a `/metrics` scrape, sampled;
//! - `cpu_ms_per_idle_run`: the server's CPU time over the window, per run ended (the window
//!   starts once every integration's first run has ended, so its runs are the ones that find
//!   nothing but for the few the changing records touch: `runs_changed`);
//! - `rss_mb`: the server's peak resident memory;
//! - `idle_bytes_per_integration_day`: what the data directory (log, records log and
//!   database) grew by over the window, per integration and day.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::catalog::AppScope;
use domain::integration::{
    ConnectIntegration, Integration, IntegrationCommand, IntegrationEvent, SyncTrigger,
};
use domain::Timestamp;
use domain::{Aggregate, Caller, CommandContext, IntegrationId, Principal, Role, StreamName};
use eventstore::{EventStore, ExpectedVersion, NewEvent};
use futures::StreamExt;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::api::Server;
use crate::engine::{machine, percentile_ms, Figure, Report};

/// How big the run is.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub integrations: usize,
    /// Integrations per workspace: what one Installed query lists.
    pub per_workspace: usize,
    /// Contacts at the fake HubSpot (each integration reads them all on its first run).
    pub records: u64,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        integrations: 10_000,
        per_workspace: 100,
        records: 50,
    };
    /// A smoke test, not figures.
    pub const QUICK: Sizes = Sizes {
        integrations: 200,
        per_workspace: 50,
        records: 10,
    };
}

/// Every integration's schedule.
const EVERY_MINUTES: u32 = 5;
const PERIOD: Duration = Duration::from_secs(EVERY_MINUTES as u64 * 60);
/// The share of the fake's records that change in an hour.
const CHANGED_PER_HOUR: f64 = 0.01;
const WRITERS: usize = 64;

fn workspace_of(n: usize, sizes: Sizes) -> String {
    format!("scale-{:04}", n / sizes.per_workspace)
}

fn admin(workspace: &str, at: Timestamp) -> anyhow::Result<CommandContext> {
    Ok(CommandContext::new(
        Caller::User(Principal {
            user: "ada".parse()?,
            workspace: workspace.parse()?,
            role: Role::Admin,
        }),
        at,
    ))
}

/// Connects `sizes.integrations` HubSpot integrations, each scheduled every 5 minutes, their
/// credentials in the vault: connected as if over the last schedule period, so that they come
/// due spread out.
async fn seed(
    stack: &Stack,
    data_dir: &Path,
    sizes: Sizes,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Vec<IntegrationId>> {
    let store = stack.store(data_dir).await?;
    let db = stack.db(data_dir).await?;
    let keys = adapters::vault::Keyring::load_or_create(&gateway::master_key_path(data_dir), None)?;
    let vault = Arc::new(adapters::vault::Vault::with_keyring(db.clone(), keys));
    let secret = adapters::provider::Credentials {
        access_token: Some(SecretString::from(crate::sync::BENCH_TOKEN)),
        ..adapters::provider::Credentials::default()
    }
    .to_secret();
    let ids: Vec<IntegrationId> = (0..sizes.integrations)
        .map(|_| IntegrationId::new())
        .collect();
    let now = Timestamp::now().unix_micros();
    let period_micros = PERIOD.as_micros() as i64;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written = futures::stream::iter(ids.clone().into_iter().enumerate())
        .map(|(n, id)| {
            let (store, vault, secret, done) =
                (store.clone(), vault.clone(), secret.clone(), done.clone());
            async move {
                let credential_ref = vault.put(id, &secret).await?;
                let offset = period_micros * (n as i64) / (sizes.integrations as i64);
                let at = Timestamp::from_unix_micros(now - period_micros + offset)
                    .context("a time within the last five minutes")?;
                let context = admin(&workspace_of(n, sizes), at)?;
                let mut state = Integration::default();
                let mut events = Vec::new();
                for command in [
                    IntegrationCommand::Connect(ConnectIntegration {
                        integration: id,
                        app: "hubspot".into(),
                        scope: AppScope::Workspace,
                        setup: Default::default(),
                        granted_scopes: vec!["crm.objects.contacts.read".into()],
                        account_label: Some(format!("portal {n}")),
                        credential_ref,
                        token_expires_at: None,
                    }),
                    IntegrationCommand::ChangeSyncSchedule {
                        every_minutes: Some(EVERY_MINUTES),
                    },
                ] {
                    let metadata = state.metadata_for(&command, &context);
                    for event in state.handle(&command, &context)? {
                        state.apply(&event, &metadata);
                        events.push(NewEvent::from_domain(&event, metadata.clone()));
                    }
                }
                store
                    .append(
                        &StreamName::integration(id),
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .await?;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(WRITERS);
    let mut written = std::pin::pin!(written);
    let mut reported = Instant::now();
    while let Some(result) = written.next().await {
        result?;
        if reported.elapsed() > Duration::from_secs(10) {
            reported = Instant::now();
            progress(&format!(
                "{} of {} connected",
                done.load(std::sync::atomic::Ordering::Relaxed),
                sizes.integrations
            ));
        }
    }
    db.close().await;
    Ok(ids)
}

/// Where the service keeps its log and its database.
#[derive(Clone, Debug)]
pub enum Stack {
    /// sled and SQLite under the data directory.
    Embedded,
    /// NATS JetStream (streams in a namespace of the run's own) and PostgreSQL (a database of
    /// the run's own), both removed afterwards.
    Distributed {
        nats_url: String,
        namespace: String,
        /// The run's database.
        database_url: String,
        /// The server's own database, from which the run's is created and dropped.
        admin_url: String,
        database: String,
    },
}

impl Stack {
    /// The distributed stack on the servers at `nats_url` and `database_url`, with names of
    /// the run's own.
    pub fn distributed(nats_url: &str, database_url: &str) -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let database = format!("harmony_scale_{suffix}");
        let mut url = url::Url::parse(database_url).context("the PostgreSQL URL")?;
        url.set_path(&format!("/{database}"));
        Ok(Stack::Distributed {
            nats_url: nats_url.to_owned(),
            namespace: format!("scale{suffix}"),
            database_url: url.to_string(),
            admin_url: database_url.to_owned(),
            database,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Stack::Embedded => "sled",
            Stack::Distributed { .. } => "jetstream+postgresql",
        }
    }

    fn jetstream(&self) -> Option<eventstore::JetStreamConfig> {
        match self {
            Stack::Embedded => None,
            Stack::Distributed {
                nats_url,
                namespace,
                ..
            } => {
                let mut config = eventstore::JetStreamConfig::new(nats_url.clone());
                config.namespace = namespace.clone();
                config.request_timeout = Duration::from_secs(30);
                Some(config)
            }
        }
    }

    async fn store(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn EventStore>> {
        Ok(
            gateway::open_logs(self.jetstream(), data_dir, gateway::RECORDS_MAX_AGE)
                .await?
                .store,
        )
    }

    async fn db(&self, data_dir: &Path) -> anyhow::Result<projections::ServiceDb> {
        match self {
            Stack::Embedded => gateway::open_service_db(None, data_dir).await,
            Stack::Distributed { database_url, .. } => {
                gateway::open_service_db(Some(database_url), data_dir).await
            }
        }
    }

    /// Creates what the run needs on the servers.
    async fn create(&self) -> anyhow::Result<()> {
        if let Stack::Distributed {
            admin_url,
            database,
            ..
        } = self
        {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(admin_url).await?;
            sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
        }
        Ok(())
    }

    /// Removes what the run made on the servers.
    async fn remove(&self) -> anyhow::Result<()> {
        if let Stack::Distributed {
            nats_url,
            namespace,
            admin_url,
            database,
            ..
        } = self
        {
            let client = async_nats::connect(nats_url.as_str()).await?;
            let js = async_nats::jetstream::new(client);
            for name in stream_names(&js, namespace).await? {
                if let Err(error) = js.delete_stream(&name).await {
                    tracing::warn!(%error, stream = %name, "cannot delete the benchmark's stream");
                }
            }
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(admin_url).await?;
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
        }
        Ok(())
    }

    /// The server's arguments for this stack.
    fn args(&self) -> Vec<String> {
        match self {
            Stack::Embedded => Vec::new(),
            Stack::Distributed {
                nats_url,
                namespace,
                database_url,
                ..
            } => vec![
                "--nats-url".into(),
                nats_url.clone(),
                "--nats-namespace".into(),
                namespace.clone(),
                "--database-url".into(),
                database_url.clone(),
            ],
        }
    }

    /// What the service stores: the data directory, and on the distributed stack the run's
    /// streams and database.
    async fn bytes(&self, data_dir: &Path) -> anyhow::Result<u64> {
        let mut bytes = bytes_under(data_dir);
        if let Stack::Distributed {
            nats_url,
            namespace,
            database_url,
            ..
        } = self
        {
            let client = async_nats::connect(nats_url.as_str()).await?;
            let js = async_nats::jetstream::new(client);
            for name in stream_names(&js, namespace).await? {
                let mut stream = js.get_stream(&name).await?;
                bytes += stream.info().await?.state.bytes;
            }
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(database_url).await?;
            let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(&mut db)
                .await?;
            db.close().await?;
            bytes += u64::try_from(size).unwrap_or(0);
        }
        Ok(bytes)
    }
}

/// The streams of `namespace` (its key-value buckets' included).
async fn stream_names(
    js: &async_nats::jetstream::Context,
    namespace: &str,
) -> anyhow::Result<Vec<String>> {
    let upper = namespace.to_ascii_uppercase();
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|name| async move { name.ok() })
        .collect()
        .await;
    Ok(names
        .into_iter()
        .filter(|name| {
            name.starts_with(&format!("{upper}_")) || name.starts_with(&format!("KV_{upper}_"))
        })
        .collect())
}

/// The bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => bytes_under(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A process's CPU time (user + system) so far, from /proc.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("a /proc stat line")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .map(|(user, system)| {
            Ok::<u64, std::num::ParseIntError>(user.parse::<u64>()? + system.parse::<u64>()?)
        })
        .context("utime and stime")??;
    // The kernel's clock ticks per second: 100 on every Linux this runs on.
    Ok(Duration::from_millis(ticks * 10))
}

/// A process's peak resident memory, in MB, from /proc.
fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .context("VmHWM in /proc status")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Latencies of `request`, issued every `every` until `until`.
async fn sample<F, Fut>(
    until: Instant,
    every: Duration,
    request: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut latencies = Vec::new();
    // The first request one period in: the window's start is not a moment of its own.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(until.into()) => break,
        }
        let started = Instant::now();
        request().await?;
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    Ok(latencies)
}

/// How the scheduled runs went, read from the log after the window.
struct Runs {
    ended: usize,
    changed: usize,
    lags: Vec<Duration>,
}

/// Reads the log from the start: each scheduled run requested after `from` (a position),
/// with when it was due and when it started or, still waiting, `until`.
async fn runs_in(store: &dyn EventStore, from: u64, until: Timestamp) -> anyhow::Result<Runs> {
    // Per integration: when its last run ended (or it was connected), and the run requested.
    let mut last_end: HashMap<StreamName, Timestamp> = HashMap::new();
    let mut waiting: HashMap<StreamName, (Timestamp, bool)> = HashMap::new();
    let mut runs = Runs {
        ended: 0,
        changed: 0,
        lags: Vec::new(),
    };
    let lag = |started: Timestamp, due: Timestamp| {
        Duration::from_micros(u64::try_from(started.unix_micros() - due.unix_micros()).unwrap_or(0))
    };
    let mut position = 1;
    loop {
        let page = store.read_all(position, 2_000).await?;
        let Some(last) = page.last().map(|event| event.position) else {
            break;
        };
        position = last + 1;
        for event in page {
            let at = event.metadata.occurred_at;
            let in_window = event.position > from;
            match event.decode::<IntegrationEvent>()? {
                Some(IntegrationEvent::IntegrationConnected(_)) => {
                    last_end.insert(event.stream.clone(), at);
                }
                Some(IntegrationEvent::SyncRequested(requested)) => {
                    let due = last_end
                        .get(&event.stream)
                        .map(|end| end.plus(time::Duration::seconds(PERIOD.as_secs() as i64)));
                    if let Some(due) = due {
                        let scheduled = matches!(requested.trigger, SyncTrigger::Schedule);
                        waiting.insert(event.stream.clone(), (due, scheduled && in_window));
                    }
                }
                Some(IntegrationEvent::SyncCompleted(done)) => {
                    if let Some((due, counted)) = waiting.remove(&event.stream) {
                        if counted {
                            let started = Timestamp::from_unix_micros(
                                at.unix_micros() - (done.duration_ms as i64) * 1000,
                            )
                            .unwrap_or(at);
                            runs.lags.push(lag(started, due));
                        }
                    }
                    if in_window {
                        runs.ended += 1;
                        runs.changed += usize::from(done.totals.changed());
                    }
                    last_end.insert(event.stream.clone(), at);
                }
                Some(IntegrationEvent::SyncFailed(_)) => {
                    if let Some((due, counted)) = waiting.remove(&event.stream) {
                        if counted {
                            runs.lags.push(lag(at, due));
                        }
                    }
                    runs.ended += usize::from(in_window);
                    last_end.insert(event.stream.clone(), at);
                }
                _ => {}
            }
        }
    }
    for (due, counted) in waiting.into_values() {
        if counted {
            runs.lags.push(lag(until, due));
        }
    }
    runs.lags.sort_unstable();
    Ok(runs)
}

pub async fn run(
    scratch: &Path,
    stack: &Stack,
    sizes: Sizes,
    window: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    stack.create().await?;
    let report = measure(scratch, stack, sizes, window, progress).await;
    if let Err(error) = stack.remove().await {
        tracing::warn!(%error, "cannot remove what the benchmark made on the servers");
    }
    report
}

async fn measure(
    scratch: &Path,
    stack: &Stack,
    sizes: Sizes,
    window: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    let fake = crate::run::FakeProcess::start(sizes.records).await?;
    let data_dir = scratch.join("service");
    gateway::create_private_dir(&data_dir)?;
    progress(&format!(
        "connecting {} integrations, scheduled every {EVERY_MINUTES} minutes",
        sizes.integrations
    ));
    seed(stack, &data_dir, sizes, progress).await?;
    let config = data_dir.join("harmony.toml");
    std::fs::write(
        &config,
        format!("[endpoints]\nhubspot_api = \"{}\"\n", fake.api),
    )?;
    let db = stack.db(&data_dir).await?;
    let workspaces = sizes.integrations.div_ceil(sizes.per_workspace);
    let mut tokens = Vec::new();
    for n in (0..workspaces).step_by((workspaces / 20).max(1)) {
        let issued = gateway::tokens::create(
            &db,
            &workspace_of(n * sizes.per_workspace, sizes).parse()?,
            &"ada".parse()?,
            Role::Admin,
            "bench",
            true,
        )
        .await?;
        tokens.push((
            workspace_of(n * sizes.per_workspace, sizes),
            issued.token.expose_secret().to_owned(),
        ));
    }
    db.close().await;

    progress("starting the server in its own process");
    let mut args = vec!["--config".to_owned(), config.display().to_string()];
    args.extend(stack.args());
    let mut server = Server::start_with(&data_dir, &args).await?;
    let pid = server.child.id().context("the server's process id")?;
    let client = reqwest::Client::new();
    server
        .caught_up(&client, &["installed"], Duration::from_secs(300))
        .await?;

    // The window starts once every integration's first run, which reads all the records,
    // has ended: what is measured is the service at rest, its runs finding little or nothing.
    progress("waiting for every integration's first run");
    let deadline = Instant::now() + PERIOD * 3;
    loop {
        let metrics = client
            .get(format!("{}/metrics", server.base))
            .send()
            .await?
            .text()
            .await?;
        let completed: f64 = metrics
            .lines()
            .find_map(|line| line.split_once("sync_runs{status=\"completed\"} "))
            .map(|(_, value)| value)
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0);
        if completed >= sizes.integrations as f64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {completed} of {} first runs ended in {} s",
            sizes.integrations,
            (PERIOD * 3).as_secs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let head = server
        .caught_up(&client, &["sync_runs"], Duration::from_secs(60))
        .await?;
    progress(&format!(
        "measuring for {} s: runs as scheduled, Installed and /metrics sampled",
        window.as_secs()
    ));
    let (bytes_before, cpu_before) = (stack.bytes(&data_dir).await?, cpu_time(pid)?);
    let started = Instant::now();
    let until = started + window;
    let installed = sample(until, Duration::from_millis(250), || {
        let (client, base) = (client.clone(), server.base.clone());
        let (workspace, token) = tokens[rand::rng().random_range(0..tokens.len())].clone();
        async move {
            let response = client
                .get(format!(
                    "{base}/v1/workspaces/{workspace}/integrations?limit=50"
                ))
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::ensure!(response.status() == 200, "Installed: {}", response.status());
            response.bytes().await?;
            Ok(())
        }
    });
    let scrapes = sample(until, Duration::from_secs(1), || {
        let (client, base) = (client.clone(), server.base.clone());
        async move {
            let response = client.get(format!("{base}/metrics")).send().await?;
            anyhow::ensure!(response.status() == 200, "/metrics: {}", response.status());
            response.bytes().await?;
            Ok(())
        }
    });
    // 1% of the records an hour: one contact changed at the fake every so often.
    let every = Duration::from_secs_f64(3600.0 / (CHANGED_PER_HOUR * sizes.records as f64));
    let changes = sample(until, every, || {
        let (client, api) = (client.clone(), fake.api.clone());
        let contact = rand::rng().random_range(1..=sizes.records);
        async move {
            let response = client
                .patch(api.join(&format!("crm/v3/objects/contacts/{contact}"))?)
                .bearer_auth(crate::sync::BENCH_TOKEN)
                .json(&serde_json::json!({"properties": {"firstname": format!("Changed {}", Timestamp::now())}}))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "PATCH contact: {}",
                response.status()
            );
            Ok(())
        }
    });
    let (installed, scrapes, _) = futures::try_join!(installed, scrapes, changes)?;
    let elapsed = started.elapsed();
    let (bytes_after, cpu_after) = (stack.bytes(&data_dir).await?, cpu_time(pid)?);
    let rss_mb = peak_rss_mb(pid)?;
    let ended_at = Timestamp::now();
    let _ = server.child.kill().await;
    let _ = server.child.wait().await;
    drop(fake);

    progress("reading the runs back from the log");
    let store = stack.store(&data_dir).await?;
    let runs = runs_in(store.as_ref(), head, ended_at).await?;
    anyhow::ensure!(runs.ended > 0, "no run ended in the window");
    let seconds = elapsed.as_secs_f64();
    let days = seconds / 86_400.0;
    let grew = bytes_after.saturating_sub(bytes_before) as f64;
    let cpu_ms = (cpu_after.saturating_sub(cpu_before)).as_secs_f64() * 1000.0;
    let lag_s = |p: f64| percentile_ms(&runs.lags, p) / 1000.0;
    progress(&format!(
        "{} runs ended ({} changed something); {} samples of Installed, {} scrapes",
        runs.ended,
        runs.changed,
        installed.len(),
        scrapes.len()
    ));
    Ok(Report {
        suite: "scale".into(),
        backend: stack.name().into(),
        machine: machine(),
        figures: vec![
            Figure::alone("integrations", sizes.integrations as f64, "integrations"),
            Figure::alone("window_s", seconds, "s"),
            Figure::alone("schedule_lag_p50_s", lag_s(0.50), "s"),
            Figure::alone("schedule_lag_p99_s", lag_s(0.99), "s"),
            Figure::alone("runs_per_s", runs.ended as f64 / seconds, "runs/s"),
            Figure::alone(
                "runs_due_per_s",
                sizes.integrations as f64 / PERIOD.as_secs_f64(),
                "runs/s",
            ),
            Figure::alone("runs_changed", runs.changed as f64, "runs"),
            Figure::alone("installed_p99_ms", percentile_ms(&installed, 0.99), "ms"),
            Figure::alone("metrics_scrape_p99_ms", percentile_ms(&scrapes, 0.99), "ms"),
            Figure::alone("cpu_ms_per_idle_run", cpu_ms / runs.ended as f64, "ms"),
            Figure::alone("rss_mb", rss_mb, "MB"),
            Figure::alone(
                "idle_bytes_per_integration_day",
                grew / sizes.integrations as f64 / days,
                "bytes",
            ),
        ],
    })
}
