//! `harmony bench sync`: full syncs of contacts from a fake HubSpot running in a process of its
//! own, end to end (pulled, diffed, record events durable, projections updated), beside a raw
//! loop that only fetches the same pages with reqwest in the same run.
//!
//! Figures: `sync_full` and `sync_unchanged` (records/s, the raw fetch loop as `raw`),
//! `sync_floor` (records/s fetched and published durably and nothing else, pipelined as the
//! sync is: the most a full sync could reach on this machine),
//! `sync_record_events_unchanged` (a count, zero when change detection works) and
//! `sync_rss_mb_1m` (the peak resident memory of a fresh process syncing the large dataset).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{machine, Figure, Report};
use command::repository::Repository;
use domain::catalog::AppScope;
use domain::integration::{Integration, IntegrationCommand, IntegrationEvent, SyncKind};
use domain::{
    Caller, CommandContext, IntegrationId, Principal, Role, StreamName, SyncId, Timestamp,
};
use eventstore::{EventStore, RecordLog, SledEventStore, SledRecordLog};
use futures::StreamExt;
use projections::runner::Projection;
use projections::ServiceDb;
use secrecy::SecretString;
use serde_json::Value;
use url::Url;

use adapters::credentials::CredentialService;
use adapters::http::{ProviderHttp, RetryPolicy};
use adapters::provider::Credentials;
use adapters::providers::{Endpoints, Providers};
use adapters::sync::{SyncConfig, SyncWorker};
use adapters::vault::{MasterKey, Vault};
use database::lease::Leases;

/// How much work a run does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Contacts in the full and unchanged syncs.
    pub records: u64,
    /// Contacts in the memory measurement.
    pub rss_records: u64,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        records: 100_000,
        rss_records: 1_000_000,
    };
    pub const QUICK: Sizes = Sizes {
        records: 2_000,
        rss_records: 20_000,
    };
}

/// The token the fake accepts in benchmark runs; the fake runs on loopback for the run only.
pub const BENCH_TOKEN: &str = "bench-access-token";

/// The embedded stack, one integration connected to the fake.
struct Stack {
    repo: Arc<Repository>,
    records: Arc<SledRecordLog>,
    db: ServiceDb,
    id: IntegrationId,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stack {
    async fn open(dir: &Path, api: &Url) -> anyhow::Result<Self> {
        let store: Arc<dyn EventStore> = Arc::new(SledEventStore::open(dir.join("events"))?);
        let repo = Arc::new(Repository::new(store.clone()));
        let records = Arc::new(SledRecordLog::open(
            dir.join("records"),
            Duration::from_secs(86_400),
        )?);
        let db = ServiceDb::open_sqlite(&dir.join("read.db")).await?;
        let vault = Arc::new(Vault::new(db.clone(), MasterKey::generate()));
        let id = IntegrationId::new();
        let credentials = Credentials {
            access_token: Some(SecretString::from(BENCH_TOKEN)),
            ..Credentials::default()
        };
        let credential_ref = vault.put(id, &credentials.to_secret()).await?;
        let admin = CommandContext::new(
            Caller::User(Principal {
                user: "bench".parse()?,
                workspace: "bench".parse()?,
                role: Role::Admin,
            }),
            Timestamp::now(),
        );
        command::lifecycle::connect(
            &repo,
            &admin,
            domain::integration::ConnectIntegration {
                integration: id,
                app: "hubspot".into(),
                scope: AppScope::Workspace,
                setup: BTreeMap::new(),
                granted_scopes: Vec::new(),
                account_label: None,
                credential_ref,
                token_expires_at: None,
            },
            command::lifecycle::DEFAULT_ABANDON_AFTER,
        )
        .await?;
        let http = ProviderHttp::new(
            adapters::outbound::Outbound::loopback(),
            RetryPolicy::default(),
        );
        let leases = Leases::new(db.clone(), Leases::process_holder());
        let service = CredentialService::new(
            repo.clone(),
            vault,
            leases.clone(),
            BTreeMap::new(),
            ProviderHttp::default_client(),
            api.join("callback")?,
        );
        let worker = SyncWorker::new(
            repo.clone(),
            adapters::sync::RunLogs {
                records: records.clone(),
                detail: Arc::new(eventstore::SledRunDetailLog::open(dir.join("run-detail"))?),
            },
            db.clone(),
            Arc::new(service),
            Providers::new(
                &Endpoints {
                    hubspot_api: api.clone(),
                    ..Endpoints::default()
                },
                &http,
            ),
            leases,
            SyncConfig::default(),
        );
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(error) = worker.follow().await {
                tracing::error!(%error, "the benchmark's sync worker stopped");
            }
        })];
        for projection in Projection::ALL {
            let (store, db) = (store.clone(), db.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(error) = projections::runner::run(projection, store, db).await {
                    tracing::error!(%error, "a benchmark projection stopped");
                }
            }));
        }
        Ok(Self {
            repo,
            records,
            db,
            id,
            tasks,
        })
    }

    /// Runs a full sync to its end with the projections caught up; returns the seconds taken
    /// and the run's totals.
    async fn full_sync(&self) -> anyhow::Result<(f64, u64)> {
        let stream = StreamName::integration(self.id);
        let head = self.repo.store().head_position().await?;
        let mut events = self.repo.store().subscribe(head + 1);
        let sync_id = SyncId::new();
        let started = Instant::now();
        self.repo
            .execute::<Integration>(
                &stream,
                &IntegrationCommand::RequestSync {
                    claimed: false,
                    sync_id,
                    kind: SyncKind::Full,
                },
                &CommandContext::new(Caller::system("benchmark"), Timestamp::now()),
            )
            .await?;
        let (position, pulled) = loop {
            let Some(event) = events.next().await else {
                anyhow::bail!("the log's subscription ended during the run");
            };
            let event = event?;
            match event.decode::<IntegrationEvent>()? {
                Some(IntegrationEvent::SyncCompleted(done)) if done.sync_id == sync_id => {
                    break (event.position, done.totals.pulled);
                }
                Some(IntegrationEvent::SyncFailed(failed)) if failed.sync_id == sync_id => {
                    anyhow::bail!("the benchmark's sync failed: {}", failed.message);
                }
                _ => {}
            }
        };
        for projection in Projection::ALL {
            while projection.checkpoint(&self.db).await? < position {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok((started.elapsed().as_secs_f64(), pulled))
    }

    async fn record_events_since(&self, from: u64) -> anyhow::Result<(u64, u64)> {
        let mut count = 0;
        let mut next = from;
        loop {
            let page = self.records.read(next, 10_000).await?;
            let Some(last) = page.last() else {
                return Ok((count, next));
            };
            next = last.position + 1;
            count += page.len() as u64;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Fetches every contact page as the sync does, and nothing else: the raw loop.
async fn raw_fetch(api: &Url, expected: u64) -> anyhow::Result<f64> {
    fetch_pages(api, expected, |_| async { Ok(()) }).await
}

/// The least a sync of new records can do: fetch every page, and publish each of its records
/// durably on the records log (sled) as a created record, the next pages fetched while the
/// ready ones are published together as the sync does — no mapping, no change detection, no
/// content hashes stored, no progress recorded, no read models. What a full sync may reach.
async fn floor_fetch_and_publish(
    api: &Url,
    expected: u64,
    records: Arc<SledRecordLog>,
) -> anyhow::Result<f64> {
    let integration = IntegrationId::new();
    let sync_id = SyncId::new();
    let (ready, mut pages) = tokio::sync::mpsc::channel::<Vec<Value>>(8);
    let publisher = tokio::spawn(async move {
        while let Some(first) = pages.recv().await {
            let mut batch = vec![first];
            while batch.len() < 8 {
                match pages.try_recv() {
                    Ok(page) => batch.push(page),
                    Err(_) => break,
                }
            }
            let changes: Vec<eventstore::RecordChange> = batch
                .into_iter()
                .flatten()
                .map(|record| eventstore::RecordChange {
                    id: domain::EventId::new(),
                    workspace: "bench".parse().expect("a valid workspace id"),
                    owner: None,
                    integration,
                    object: "contacts".into(),
                    record_id: record["id"].as_str().unwrap_or_default().to_owned(),
                    op: eventstore::RecordOp::Created,
                    data: record,
                    content_hash: String::new(),
                    sync_id,
                    occurred_at: Timestamp::now(),
                })
                .collect();
            records.publish(changes).await?;
        }
        Ok::<(), anyhow::Error>(())
    });
    let started = Instant::now();
    fetch_pages(api, expected, |page: Vec<Value>| {
        let ready = ready.clone();
        async move {
            ready
                .send(page)
                .await
                .map_err(|_| anyhow::anyhow!("the floor's publisher stopped"))
        }
    })
    .await?;
    drop(ready);
    publisher.await??;
    Ok(started.elapsed().as_secs_f64())
}

/// Fetches every contact page as the sync does, handing each page's records to `then`.
async fn fetch_pages<F, Fut>(api: &Url, expected: u64, mut then: F) -> anyhow::Result<f64>
where
    F: FnMut(Vec<Value>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let client = ProviderHttp::default_client();
    let fields = domain::catalog::app("hubspot")
        .and_then(|app| app.mappable_object("contacts"))
        .map(|object| object.provider_fields.join(","))
        .unwrap_or_default();
    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut fetched = 0u64;
    loop {
        let mut url = api.join("crm/v3/objects/contacts")?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", "100");
            query.append_pair("archived", "false");
            query.append_pair("properties", &fields);
            if let Some(after) = &after {
                query.append_pair("after", after);
            }
        }
        let page: Value = client
            .get(url)
            .bearer_auth(BENCH_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut page = page;
        let next = page
            .pointer("/paging/next/after")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let results = match page.get_mut("results").map(Value::take) {
            Some(Value::Array(results)) => results,
            _ => Vec::new(),
        };
        fetched += results.len() as u64;
        then(results).await?;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    anyhow::ensure!(
        fetched == expected,
        "the raw loop fetched {fetched} of {expected}"
    );
    Ok(started.elapsed().as_secs_f64())
}

/// The suite, with the fake HubSpot at `api` holding `sizes.records` contacts. `rss` runs the
/// memory measurement in a fresh process against a fake holding `sizes.rss_records` and
/// returns its peak resident megabytes.
pub async fn run<R, F>(
    dir: &Path,
    api: &Url,
    sizes: Sizes,
    rss: R,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report>
where
    R: FnOnce() -> F,
    F: std::future::Future<Output = anyhow::Result<f64>>,
{
    progress(&format!("raw fetch of {} contacts", sizes.records));
    let raw = raw_fetch(api, sizes.records).await?;
    progress("the floor: fetch and publish, nothing else");
    let floor = {
        let records = Arc::new(SledRecordLog::open(
            dir.join("floor-records"),
            Duration::from_secs(86_400),
        )?);
        floor_fetch_and_publish(api, sizes.records, records).await?
    };
    let stack = Stack::open(dir, api).await?;
    progress("full sync");
    let (full, pulled) = stack.full_sync().await?;
    anyhow::ensure!(
        pulled == sizes.records,
        "the sync pulled {pulled} of {}",
        sizes.records
    );
    let (_, after_full) = stack.record_events_since(1).await?;
    progress("full sync with nothing changed");
    let (unchanged, _) = stack.full_sync().await?;
    let (unchanged_events, _) = stack.record_events_since(after_full).await?;
    drop(stack);
    progress(&format!(
        "peak memory syncing {} contacts",
        sizes.rss_records
    ));
    let rss_mb = rss().await?;
    let records = sizes.records as f64;
    let rss_name = if sizes.rss_records == Sizes::FULL.rss_records {
        "sync_rss_mb_1m".to_owned()
    } else {
        format!("sync_rss_mb_{}", sizes.rss_records)
    };
    Ok(Report {
        suite: "sync".into(),
        backend: "sled".into(),
        machine: machine(),
        figures: vec![
            Figure::against_raw("sync_full", records / full, "records/s", records / raw),
            Figure::against_raw("sync_floor", records / floor, "records/s", records / raw),
            Figure::against_raw(
                "sync_unchanged",
                records / unchanged,
                "records/s",
                records / raw,
            ),
            Figure::alone(
                "sync_record_events_unchanged",
                unchanged_events as f64,
                "events",
            ),
            Figure::alone(&rss_name, rss_mb, "MB"),
        ],
    })
}

/// The memory measurement's own process: one full sync, then this process's peak resident
/// megabytes (`VmHWM`).
pub async fn rss_child(dir: &Path, api: &Url, expected: u64) -> anyhow::Result<f64> {
    let stack = Stack::open(dir, api).await?;
    let (_, pulled) = stack.full_sync().await?;
    anyhow::ensure!(pulled == expected, "the sync pulled {pulled} of {expected}");
    drop(stack);
    peak_rss_mb()
}

/// This process's peak resident set, from `/proc/self/status`.
pub fn peak_rss_mb() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    Ok(kb / 1024.0)
}
