//! Harmony Sync as an operator runs it past one machine — three JetStream servers (streams
//! replicated three times), one PostgreSQL, three `harmony serve` processes, all started by
//! `scripts/cluster.sh` from the files under `deploy/` — under a storm of API traffic while
//! the JetStream stream leader is SIGKILLed and restarted, a service process is SIGKILLed in
//! the middle of a sync and restarted, and PostgreSQL is restarted.
//!
//! Afterwards: every acknowledged write is in the log, no event is stored twice, every chain
//! verifies, every sync run completed exactly once, the read models equal a fresh rebuild, an
//! SSE subscriber and a durable JetStream consumer each saw every event, and the API answered
//! every request it refused with 503 or 409 and Retry-After, never a 500.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapters::vault::{MasterKey, Vault};
use async_nats::jetstream::{self, consumer::pull};
use command::repository::Repository;
use domain::aggregate::CommandContext;
use domain::{Caller, IntegrationId, Principal, Role, Timestamp};
use eventstore::waiting::eventually;
use eventstore::{
    EventStore, JetStreamConfig, JetStreamEventStore, JetStreamRunDetailLog, RecordedEvent,
    RunDetailLog,
};
use fakes::hubspot::{self as fake, FakeHubSpot};
use fakes::todoist::FakeTodoist;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

const WORKSPACES: usize = 10;
/// Personal Todoist integrations per workspace, connected through the API during the storm.
const MEMBERS: usize = 9;
const TODOIST_TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
/// The ports deploy/ names; the cluster runs them moved by an offset that finds them free.
const PORTS: [u16; 12] = [
    4222, 4223, 4224, 6222, 6223, 6224, 8222, 8223, 8224, 8081, 8082, 8083,
];
const SERVES: usize = 3;
const WAIT: Duration = Duration::from_secs(120);

/// The cluster as scripts/cluster.sh runs it, in a directory of its own on free ports.
struct Cluster {
    dir: tempfile::TempDir,
    offset: u16,
    config: PathBuf,
    /// How many `harmony serve` processes it runs.
    serves: usize,
    /// Every nats-server fsyncs each write before acknowledging it (`HARMONY_CLUSTER_SYNC`).
    sync_always: bool,
}

impl Cluster {
    fn free_offset() -> u16 {
        for _ in 0..50 {
            // Below the ephemeral range (32768 and up), where outgoing connections take ports.
            let offset = 10_000 + rand::random::<u16>() % 14_000;
            let free = PORTS
                .iter()
                .chain([5432].iter())
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok());
            if free {
                return offset;
            }
        }
        panic!("no free set of ports for the cluster");
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
    }

    /// Runs `scripts/cluster.sh ARGS` and returns its standard output; fails the test if it
    /// fails.
    async fn run(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new("bash")
            .arg(Self::script())
            .args(args)
            .env("HARMONY_CLUSTER_DIR", self.dir.path())
            .env("HARMONY_CLUSTER_PORT_OFFSET", self.offset.to_string())
            .env("HARMONY_CLUSTER_SERVES", self.serves.to_string())
            .env(
                "HARMONY_CLUSTER_SYNC",
                if self.sync_always { "always" } else { "" },
            )
            .env("HARMONY_BIN", env!("CARGO_BIN_EXE_harmony"))
            .env("HARMONY_CONFIG", &self.config)
            .env("HARMONY_LOG", "info")
            // A dead process's runs are taken over within seconds.
            .env("HARMONY_SYNC_LEASE_SECONDS", "3")
            .env("HARMONY_SYNC_WORK_ACK_WAIT_SECONDS", "3")
            .env("HARMONY_CHECKPOINT_SECONDS", "2")
            .env_remove("HARMONY_NATS_URL")
            .env_remove("HARMONY_DATABASE_URL")
            .env_remove("HARMONY_MASTER_KEY")
            .env_remove("HARMONY_CHECKPOINT_KEY")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "scripts/cluster.sh {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn nats_url(&self) -> String {
        (4222..=4224)
            .map(|port| format!("nats://127.0.0.1:{}", port + self.offset))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn database_url(&self) -> String {
        format!(
            "postgres://harmony@localhost:{}/harmony?host={}",
            5432 + self.offset,
            self.dir.path().join("pg").display()
        )
    }

    fn serve_base(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}", 8080 + n as u16 + self.offset)
    }

    fn serve_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("logs/serve-{n}.log")))
            .unwrap_or_default()
    }

    fn key(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("keys/{name}.key")))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The operators' commands, run against the cluster.
    async fn harmony(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_harmony"))
            .args(args)
            .args(["--nats-url", &self.nats_url(), "--nats-replicas", "3"])
            .args(["--database-url", &self.database_url()])
            .env("HARMONY_MASTER_KEY", self.key("master"))
            .env("HARMONY_CHECKPOINT_KEY", self.key("checkpoint"))
            .env("HARMONY_DATA_DIR", self.dir.path().join("operator"))
            .output()
            .await
            .unwrap()
    }
}

impl Drop for Cluster {
    /// Whatever happened, nothing of the cluster is left running.
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(Self::script())
            .arg("down")
            .env("HARMONY_CLUSTER_DIR", self.dir.path())
            .env("HARMONY_CLUSTER_PORT_OFFSET", self.offset.to_string())
            .env("HARMONY_CLUSTER_SERVES", self.serves.to_string())
            .stdin(std::process::Stdio::null())
            .status();
    }
}

/// What the clients' requests met, over the whole storm.
#[derive(Debug, Default)]
struct Tally {
    /// Answers: each HTTP answer received.
    answered: u64,
    succeeded: u64,
    /// Refused with 503 or 409 and Retry-After (then retried).
    refused: u64,
    /// Sent to a process that was down (connection refused or cut): a load balancer sends
    /// these elsewhere, and so do the clients.
    unreachable: u64,
    /// What must never happen: a 500, a refusal without Retry-After, an unexpected answer.
    violations: Vec<String>,
}

/// A client of the cluster: spreads requests over the processes, goes to the next when one is
/// down, and retries refusals after their Retry-After with the same Idempotency-Key.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    bases: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    tally: Arc<Mutex<Tally>>,
}

impl Api {
    fn new(bases: Vec<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            bases: Arc::new(bases),
            next: Arc::default(),
            tally: Arc::default(),
        }
    }

    /// The answer to one request, retried until it is answered other than by a refusal, or
    /// `None` after a violation (recorded).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        allowed: &[(u16, &str)],
    ) -> Option<(StatusCode, Value)> {
        let key = uuid::Uuid::now_v7().to_string();
        let deadline = Instant::now() + WAIT;
        loop {
            if Instant::now() > deadline {
                self.violation(format!("{method} {path}: no answer within {WAIT:?}"));
                return None;
            }
            let base = &self.bases[self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()];
            let mut request = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(token);
            if method != Method::GET {
                request = request.header("Idempotency-Key", &key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(_) => {
                    self.tally.lock().unwrap().unreachable += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let Ok(text) = response.text().await else {
                self.tally.lock().unwrap().unreachable += 1;
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let code = value["code"].as_str().unwrap_or_default().to_owned();
            {
                let mut tally = self.tally.lock().unwrap();
                tally.answered += 1;
                if status.is_success() {
                    tally.succeeded += 1;
                }
            }
            if status.is_success() || allowed.contains(&(status.as_u16(), code.as_str())) {
                return Some((status, value));
            }
            if matches!(status.as_u16(), 503 | 409) {
                match retry_after {
                    Some(seconds) => {
                        self.tally.lock().unwrap().refused += 1;
                        tokio::time::sleep(Duration::from_secs(seconds.min(2))).await;
                        continue;
                    }
                    None => {
                        self.violation(format!(
                            "{method} {path}: {status} without Retry-After: {text}"
                        ));
                        return None;
                    }
                }
            }
            self.violation(format!("{method} {path}: {status} {text}"));
            return None;
        }
    }

    fn violation(&self, what: String) {
        self.tally.lock().unwrap().violations.push(what);
    }
}

/// One integration the storm works on, and who may act on it.
#[derive(Clone, Debug)]
struct Target {
    id: IntegrationId,
    workspace: String,
    token: String,
    hubspot: bool,
}

/// What the service acknowledged, to be found in the log afterwards.
#[derive(Debug, Default)]
struct Acknowledged {
    /// sync_id → integration.
    syncs: BTreeMap<String, IntegrationId>,
    connects: BTreeSet<IntegrationId>,
    /// (integration, version).
    mappings: BTreeSet<(IntegrationId, u64)>,
}

struct World {
    cluster: Cluster,
    api: Api,
    store: JetStreamEventStore,
    /// The runs stream: each sync run's detail.
    detail: JetStreamRunDetailLog,
    db: sqlx::PgPool,
    targets: Mutex<Vec<Target>>,
    /// (workspace, member token) of each Todoist not connected yet.
    to_connect: Mutex<Vec<(String, String)>>,
    acknowledged: Mutex<Acknowledged>,
    /// Probe writes made so far.
    probes: AtomicUsize,
    hubspot: FakeHubSpot,
    _todoist: FakeTodoist,
}

impl World {
    async fn start() -> Self {
        let hubspot = FakeHubSpot::start(300, 0).await.unwrap();
        // Slow enough pages that a run spans the faults.
        hubspot.faults.slow(Duration::from_millis(150));
        let todoist = FakeTodoist::start(TODOIST_TOKEN, 30).await.unwrap();
        // A short path: PostgreSQL's socket lives under it.
        let dir = tempfile::Builder::new()
            .prefix("cluster")
            .tempdir_in("/tmp")
            .unwrap();
        let config = dir.path().join("harmony.toml");
        std::fs::write(
            &config,
            format!(
                "[oauth.hubspot]\nclient_id = \"{}\"\nclient_secret = \"{}\"\ntoken_url = \"{}\"\n\n\
                 [endpoints]\nhubspot_api = \"{}\"\ntodoist_api = \"{}\"\n",
                fake::CLIENT_ID,
                fake::CLIENT_SECRET,
                hubspot.server.base.join("oauth/v1/token").unwrap(),
                hubspot.server.base,
                todoist.server.base.join("api/v1/").unwrap(),
            ),
        )
        .unwrap();
        let cluster = Cluster {
            dir,
            offset: Cluster::free_offset(),
            config,
            serves: SERVES,
            sync_always: false,
        };
        cluster.run(&["up"]).await;

        let mut js = JetStreamConfig::new(cluster.nats_url());
        js.replicas = 3;
        let store = JetStreamEventStore::connect(js).await.unwrap();
        let detail = JetStreamRunDetailLog::open(&store).await.unwrap();
        let db = sqlx::PgPool::connect(&cluster.database_url())
            .await
            .unwrap();
        let api = Api::new((1..=SERVES).map(|n| cluster.serve_base(n)).collect());
        let world = Self {
            api,
            store,
            detail,
            db,
            targets: Mutex::default(),
            to_connect: Mutex::default(),
            acknowledged: Mutex::default(),
            probes: AtomicUsize::default(),
            hubspot,
            _todoist: todoist,
            cluster,
        };
        world.seed().await;
        world
    }

    /// A HubSpot connected in each workspace (as its OAuth flow would leave it), an admin
    /// token there, and member tokens for the Todoists the storm connects.
    async fn seed(&self) {
        let read = database::ServiceDb::connect_postgres(&self.cluster.database_url())
            .await
            .unwrap();
        let vault = Vault::new(
            read.clone(),
            MasterKey::from_base64(&self.cluster.key("master")).unwrap(),
        );
        let repo = Repository::new(Arc::new(self.store.clone()));
        for w in 0..WORKSPACES {
            let workspace = format!("w{w:02}");
            let admin = gateway::tokens::create(
                &read,
                &workspace.parse().unwrap(),
                &"admin".parse().unwrap(),
                Role::Admin,
                "cluster test",
                true,
            )
            .await
            .unwrap();
            let context = CommandContext::new(
                Caller::User(Principal {
                    user: "admin".parse().unwrap(),
                    workspace: workspace.parse().unwrap(),
                    role: Role::Admin,
                }),
                Timestamp::now(),
            );
            let id = self
                .hubspot
                .connect(&repo, &vault, &context, &["oauth"], None)
                .await
                .unwrap();
            self.targets.lock().unwrap().push(Target {
                id,
                workspace: workspace.clone(),
                token: admin.token.expose_secret().to_owned(),
                hubspot: true,
            });
            for m in 0..MEMBERS {
                let member = gateway::tokens::create(
                    &read,
                    &workspace.parse().unwrap(),
                    &format!("m{m}").parse().unwrap(),
                    Role::Member {
                        integration_permission: false,
                    },
                    "cluster test",
                    true,
                )
                .await
                .unwrap();
                self.to_connect
                    .lock()
                    .unwrap()
                    .push((workspace.clone(), member.token.expose_secret().to_owned()));
            }
        }
    }

    fn admin_of(&self, workspace: &str) -> String {
        self.targets
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.hubspot && t.workspace == workspace)
            .unwrap()
            .token
            .clone()
    }

    fn pick(&self) -> Target {
        let targets = self.targets.lock().unwrap();
        targets[rand::random::<u32>() as usize % targets.len()].clone()
    }

    async fn request_sync(&self, target: &Target) -> bool {
        let path = format!(
            "/v1/workspaces/{}/integrations/{}/sync",
            target.workspace, target.id
        );
        let Some((_, answer)) = self
            .api
            .call(Method::POST, &path, &target.token, None, &[])
            .await
        else {
            return false;
        };
        let sync_id = answer["sync_id"].as_str().unwrap().to_owned();
        self.acknowledged
            .lock()
            .unwrap()
            .syncs
            .insert(sync_id, target.id);
        true
    }

    async fn change_mapping(&self, target: &Target) {
        let extra = ["title", "company", "phone"][rand::random::<u32>() as usize % 3];
        let provider = match extra {
            "title" => "jobtitle",
            other => other,
        };
        let body = json!({"object": "contacts", "fields": [
            {"provider_field": "email", "harmony_field": "email"},
            {"provider_field": provider, "harmony_field": extra},
        ]});
        let path = format!(
            "/v1/workspaces/{}/integrations/{}/mappings",
            target.workspace, target.id
        );
        if let Some((_, answer)) = self
            .api
            .call(Method::PUT, &path, &target.token, Some(&body), &[])
            .await
        {
            let version = answer["version"].as_u64().unwrap();
            self.acknowledged
                .lock()
                .unwrap()
                .mappings
                .insert((target.id, version));
        }
    }

    async fn connect_next(&self) {
        let Some((workspace, token)) = self.to_connect.lock().unwrap().pop() else {
            return;
        };
        let body = json!({"app": "todoist", "fields": {"api_token": TODOIST_TOKEN}});
        let path = format!("/v1/workspaces/{workspace}/integrations");
        // A retry of a connect whose first answer was lost (its process killed, or the log
        // between leaders when the event had in fact been stored) finds it done: the app is
        // connected already, which is the truth.
        let already = [(409, "app_already_connected")];
        if let Some((StatusCode::CREATED, answer)) = self
            .api
            .call(Method::POST, &path, &token, Some(&body), &already)
            .await
        {
            let id: IntegrationId = answer["integration_id"].as_str().unwrap().parse().unwrap();
            self.acknowledged.lock().unwrap().connects.insert(id);
            self.targets.lock().unwrap().push(Target {
                id,
                workspace,
                token,
                hubspot: false,
            });
        }
    }

    async fn read(&self, target: &Target) {
        let path = if rand::random::<bool>() {
            format!("/v1/workspaces/{}/integrations", target.workspace)
        } else {
            format!(
                "/v1/workspaces/{}/integrations/{}/sync-logs",
                target.workspace, target.id
            )
        };
        self.api
            .call(Method::GET, &path, &target.token, None, &[])
            .await;
    }

    /// One client of the storm: syncs, connects, mapping changes and reads until `stop`.
    async fn client(self: Arc<Self>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let target = self.pick();
            match rand::random::<u32>() % 10 {
                0..=2 => {
                    self.request_sync(&target).await;
                }
                3 if target.hubspot => self.change_mapping(&target).await,
                4 | 5 => self.connect_next().await,
                _ => self.read(&target).await,
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// Every event of the log, in order.
    async fn log(&self) -> Vec<RecordedEvent> {
        let mut events = Vec::new();
        loop {
            let next = events.last().map_or(1, |e: &RecordedEvent| e.position + 1);
            let page = self.store.read_all(next, 5000).await.unwrap();
            if page.is_empty() {
                return events;
            }
            events.extend(page);
        }
    }

    /// A write, timed: how long after a fault the cluster accepts one again. (A schedule
    /// change, alternating, so that every one appends.)
    async fn probe_write(&self, since: Instant) -> Duration {
        let target = self.targets.lock().unwrap()[WORKSPACES - 1].clone();
        let every = 60 + self.probes.fetch_add(1, Ordering::Relaxed) % 2;
        let path = format!(
            "/v1/workspaces/{}/integrations/{}/schedule",
            target.workspace, target.id
        );
        let body = json!({ "every_minutes": every });
        assert!(
            self.api
                .call(Method::PUT, &path, &target.token, Some(&body), &[])
                .await
                .is_some(),
            "a write after the fault: {:?}",
            self.api.tally.lock().unwrap().violations
        );
        since.elapsed()
    }

    async fn probe_read(&self, since: Instant) -> Duration {
        let target = self.targets.lock().unwrap()[WORKSPACES - 1].clone();
        let path = format!("/v1/workspaces/{}/integrations", target.workspace);
        assert!(
            self.api
                .call(Method::GET, &path, &target.token, None, &[])
                .await
                .is_some(),
            "a read after the fault: {:?}",
            self.api.tally.lock().unwrap().violations
        );
        since.elapsed()
    }

    /// The JetStream server leading the events stream.
    async fn stream_leader(&self) -> String {
        let js = jetstream::new(self.store.client().clone());
        eventually(WAIT, "the events stream has a leader", || async {
            let mut stream = js.get_stream("HARMONY_EVENTS").await.ok()?;
            let info = stream.info().await.ok()?;
            info.cluster.as_ref()?.leader.clone()
        })
        .await
    }

    /// A process running a sync right now, with the run's id.
    async fn process_mid_sync(&self) -> (usize, String) {
        eventually(WAIT, "a process is running a sync", || async {
            // The run's detail is read first and the log after it, so a run that ends between
            // the two reads is seen as ended.
            let mut candidates = Vec::new();
            for n in 1..=SERVES {
                let log = self.cluster.serve_log(n);
                let Some(line) = log.lines().rev().find(|l| l.contains("running a sync")) else {
                    continue;
                };
                let Some(sync) = line
                    .split("sync=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                else {
                    continue;
                };
                let Ok(sync_id) = sync.parse::<domain::SyncId>() else {
                    continue;
                };
                // It has recorded progress in its detail and not ended.
                let progressed =
                    self.detail.read(sync_id).await.is_ok_and(|detail| {
                        detail.iter().any(|e| e.event_type == "SyncProgressed")
                    });
                if progressed {
                    candidates.push((n, sync.to_owned()));
                }
            }
            let log = self.log().await;
            let finished: BTreeSet<String> = log
                .iter()
                .filter(|e| e.event_type == "SyncCompleted" || e.event_type == "SyncFailed")
                .filter_map(|e| e.data().ok()?["sync_id"].as_str().map(str::to_owned))
                .collect();
            candidates
                .into_iter()
                .find(|(_, sync)| !finished.contains(sync))
        })
        .await
    }

    async fn dump(&self, table: &str, order: &str) -> Vec<String> {
        sqlx::query_scalar::<_, String>(&format!(
            "SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}"
        ))
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    async fn read_models(&self) -> Vec<Vec<String>> {
        vec![
            self.dump("installed", "integration_id").await,
            self.dump("sync_runs", "sync_id").await,
            self.dump("sync_run_pages", "sync_id, object, page").await,
        ]
    }
}

/// Reads a workspace's event stream as a client would, from the start and across process
/// deaths (reconnecting with Last-Event-ID), collecting the event ids it is sent.
async fn subscribe(api: Api, workspace: String, token: String, seen: Arc<Mutex<Vec<String>>>) {
    let mut last: Option<String> = None;
    loop {
        let base = &api.bases[api.next.fetch_add(1, Ordering::Relaxed) % api.bases.len()];
        let mut request = reqwest::Client::new()
            .get(format!("{base}/v1/workspaces/{workspace}/events?after=0"))
            .bearer_auth(&token);
        if let Some(last) = &last {
            request = request.header("Last-Event-ID", last);
        }
        let Ok(mut response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if !response.status().is_success() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let message: String = buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in message.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = serde_json::from_str::<Value>(v.trim()).ok();
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    seen.lock()
                        .unwrap()
                        .push(data["id"].as_str().unwrap_or_default().to_owned());
                    last = Some(id);
                }
            }
        }
    }
}

/// A downstream service's durable consumer of every event, acknowledging each after it is
/// recorded: it resumes across server deaths and sees redeliveries, which it dedupes by id.
async fn consume(store: JetStreamEventStore, seen: Arc<Mutex<Vec<String>>>) {
    let js = jetstream::new(store.client().clone());
    loop {
        let Ok(stream) = js.get_stream("HARMONY_EVENTS").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let config = pull::Config {
            durable_name: Some("cluster-test".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        };
        let Ok(consumer) = stream.get_or_create_consumer("cluster-test", config).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(mut messages) = consumer.messages().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(Ok(message)) = messages.next().await {
            let Ok(info) = message.info() else { continue };
            let Ok(event) = eventstore::wire::decode(&message.payload, info.stream_sequence) else {
                continue;
            };
            seen.lock().unwrap().push(event.id.to_string());
            let _ = message.ack().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_loses_nothing_when_a_jetstream_leader_a_service_process_and_postgresql_fail() {
    let world = Arc::new(World::start().await);

    // The subscribers, from the start of the log.
    let sse_seen = Arc::new(Mutex::new(Vec::new()));
    let sse = tokio::spawn(subscribe(
        world.api.clone(),
        "w00".into(),
        world.admin_of("w00"),
        sse_seen.clone(),
    ));
    let consumed = Arc::new(Mutex::new(Vec::new()));
    let consumer = tokio::spawn(consume(world.store.clone(), consumed.clone()));

    // The storm.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| tokio::spawn(world.clone().client(stop.clone())))
        .collect();
    eventually(WAIT, "syncs are running", || async {
        (world
            .log()
            .await
            .iter()
            .filter(|e| e.event_type == "SyncCompleted")
            .count()
            >= 5)
            .then_some(())
    })
    .await;

    let mut recovery = BTreeMap::new();
    // (1) The JetStream server leading the events stream dies.
    let leader = world.stream_leader().await;
    let started = Instant::now();
    world.cluster.run(&["kill", &leader]).await;
    recovery.insert(
        "jetstream leader killed: writes again",
        world.probe_write(started).await,
    );
    let new_leader = world.stream_leader().await;
    assert_ne!(
        new_leader, leader,
        "another server leads the stream meanwhile"
    );
    world.cluster.run(&["start", &leader]).await;

    // (2) A service process dies in the middle of a sync; another resumes the run. (Should
    // the run end in the instant before the kill, the fault is tried again on another run.)
    // Slower pages meanwhile, so that a run outlives the moment it is caught in.
    world.hubspot.faults.slow(Duration::from_millis(700));
    let mut attempts = 0;
    let victim = loop {
        attempts += 1;
        assert!(attempts <= 5, "no run was caught in the middle five times");
        let (victim, sync) = world.process_mid_sync().await;
        let survivors: Vec<(usize, usize)> = (1..=SERVES)
            .filter(|n| *n != victim)
            .map(|n| (n, world.cluster.serve_log(n).lines().count()))
            .collect();
        let started = Instant::now();
        world
            .cluster
            .run(&["kill", &format!("serve-{victim}")])
            .await;
        let taken_over = eventually(WAIT, "the run is taken over, or had ended", || async {
            let resumed = survivors.iter().any(|(n, seen)| {
                world
                    .cluster
                    .serve_log(*n)
                    .lines()
                    .skip(*seen)
                    .any(|l| l.contains("running a sync") && l.contains(&sync))
            });
            if resumed {
                return Some(true);
            }
            let ended = world.log().await.iter().any(|e| {
                matches!(e.event_type.as_str(), "SyncCompleted" | "SyncFailed")
                    && e.data_json.contains(&sync)
            });
            ended.then_some(false)
        })
        .await;
        if taken_over {
            recovery.insert(
                "service process killed: its sync resumed",
                started.elapsed(),
            );
            break victim;
        }
        world
            .cluster
            .run(&["start", &format!("serve-{victim}")])
            .await;
    };
    world.hubspot.faults.slow(Duration::from_millis(150));
    world
        .cluster
        .run(&["start", &format!("serve-{victim}")])
        .await;

    // (3) PostgreSQL restarts.
    let started = Instant::now();
    world.cluster.run(&["restart", "postgres"]).await;
    recovery.insert(
        "postgresql restarted: reads again",
        world.probe_read(started).await,
    );
    recovery.insert(
        "postgresql restarted: writes again",
        world.probe_write(started).await,
    );

    // A little more storm after the last fault, then quiet: at least 30 more successes, and
    // a storm of 250 in all however fast the faults passed.
    let before = world.api.tally.lock().unwrap().succeeded;
    eventually(WAIT, "the storm goes on after the faults", || async {
        (world.api.tally.lock().unwrap().succeeded >= (before + 30).max(250)).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    while !world.to_connect.lock().unwrap().is_empty() {
        world.connect_next().await;
    }

    // Every run acknowledged completes, once.
    let acknowledged = std::mem::take(&mut *world.acknowledged.lock().unwrap());
    let deadline = Instant::now() + WAIT;
    let log = loop {
        let log = world.log().await;
        let finished: BTreeSet<String> = log
            .iter()
            .filter(|e| e.event_type == "SyncCompleted" || e.event_type == "SyncFailed")
            .filter_map(|e| e.data().ok()?["sync_id"].as_str().map(str::to_owned))
            .collect();
        let unfinished: Vec<(&String, &IntegrationId)> = acknowledged
            .syncs
            .iter()
            .filter(|(sync, _)| !finished.contains(*sync))
            .collect();
        if unfinished.is_empty() {
            break log;
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for (sync, id) in unfinished {
                let stream = domain::StreamName::integration(*id).to_string();
                let events: Vec<String> = log
                    .iter()
                    .filter(|e| e.stream.to_string() == stream)
                    .map(|e| format!("{} {}", e.event_type, e.data_json))
                    .collect();
                let lines: Vec<String> = (1..=SERVES)
                    .flat_map(|n| {
                        world
                            .cluster
                            .serve_log(n)
                            .lines()
                            .filter(|l| l.contains(sync.as_str()) || l.contains(&id.to_string()))
                            .map(|l| format!("serve-{n}: {l}"))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                report.push_str(&format!(
                    "\nrun {sync} of {id}:\n  {}\n  {}",
                    events.join("\n  "),
                    lines.join("\n  ")
                ));
            }
            panic!("acknowledged runs never finished:{report}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // No event stored twice.
    let ids: Vec<String> = log.iter().map(|e| e.id.to_string()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event id is stored twice");

    // Every acknowledged write is in the log.
    let by_type = |kind: &str| -> Vec<(&RecordedEvent, Value)> {
        log.iter()
            .filter(|e| e.event_type == kind)
            .map(|e| (e, e.data().unwrap()))
            .collect()
    };
    let requested: BTreeSet<String> = by_type("SyncRequested")
        .iter()
        .map(|(_, d)| d["sync_id"].as_str().unwrap().to_owned())
        .collect();
    for sync in acknowledged.syncs.keys() {
        assert!(
            requested.contains(sync),
            "acknowledged sync {sync} is not in the log"
        );
    }
    let connected: BTreeSet<String> = by_type("IntegrationConnected")
        .iter()
        .map(|(e, _)| e.stream.to_string())
        .collect();
    for id in &acknowledged.connects {
        assert!(
            connected.contains(&domain::StreamName::integration(*id).to_string()),
            "acknowledged connect {id} is not in the log"
        );
    }
    let mappings: BTreeSet<(String, u64)> = by_type("MappingChanged")
        .iter()
        .map(|(e, d)| (e.stream.to_string(), d["version"].as_u64().unwrap()))
        .collect();
    for (id, version) in &acknowledged.mappings {
        assert!(
            mappings.contains(&(domain::StreamName::integration(*id).to_string(), *version)),
            "acknowledged mapping version {version} of {id} is not in the log"
        );
    }

    // Every run finished once, and completed; it started in its detail at most once (a run
    // that found nothing to record never records its start), and none in the event log.
    assert!(by_type("SyncStarted").is_empty() && by_type("SyncProgressed").is_empty());
    let mut runs: HashMap<String, (u32, u32, u32)> = HashMap::new();
    for (kind, slot) in [("SyncCompleted", 1), ("SyncFailed", 2)] {
        for (_, data) in by_type(kind) {
            let entry = runs
                .entry(data["sync_id"].as_str().unwrap().to_owned())
                .or_default();
            match slot {
                1 => entry.1 += 1,
                _ => entry.2 += 1,
            }
        }
    }
    for sync in &requested {
        let sync_id: domain::SyncId = sync.parse().unwrap();
        let started = world
            .detail
            .read(sync_id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event_type == "SyncStarted")
            .count();
        runs.entry(sync.clone()).or_default().0 = started as u32;
    }
    let failures: Vec<String> = by_type("SyncFailed")
        .iter()
        .map(|(e, d)| format!("{} {d}", e.stream))
        .collect();
    for sync in &requested {
        let (started, completed, failed) = runs.get(sync).copied().unwrap_or_default();
        assert!(
            started <= 1 && (completed, failed) == (1, 0),
            "run {sync}: started {started}, completed {completed}, failed {failed} times; \
             failures: {failures:#?}"
        );
    }

    // Every chain verifies.
    let verified = world.cluster.harmony(&["verify", "--all"]).await;
    assert!(
        verified.status.success(),
        "verify --all: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // The read models, caught up, equal a fresh rebuild from the log.
    let head = log.last().unwrap().position;
    eventually(WAIT, "the projections catch up", || async {
        let names: Vec<&str> = projections::runner::Projection::ALL
            .iter()
            .map(|p| p.name())
            .collect();
        let positions: Vec<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ANY($1)")
                .bind(&names)
                .fetch_all(&world.db)
                .await
                .ok()?;
        (positions.len() == names.len() && positions.iter().all(|p| *p as u64 >= head))
            .then_some(())
    })
    .await;
    let live = world.read_models().await;
    let rebuilt = world.cluster.harmony(&["projections", "rebuild"]).await;
    assert!(
        rebuilt.status.success(),
        "projections rebuild: {}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert_eq!(
        world.read_models().await,
        live,
        "the read models equal a rebuild"
    );

    // The subscribers saw every event they are owed, each at least once.
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    eventually(WAIT, "the JetStream consumer sees every event", || async {
        let seen: BTreeSet<String> = consumed.lock().unwrap().iter().cloned().collect();
        (seen == all).then_some(())
    })
    .await;
    let owed: BTreeSet<String> = log
        .iter()
        .filter(|e| e.metadata.workspace.as_str() == "w00" && e.metadata.owner.is_none())
        .map(|e| e.id.to_string())
        .collect();
    eventually(
        WAIT,
        "the SSE subscriber sees every event of its workspace",
        || async {
            let seen: BTreeSet<String> = sse_seen.lock().unwrap().iter().cloned().collect();
            (seen == owed).then_some(())
        },
    )
    .await;
    sse.abort();
    consumer.abort();

    // The API answered throughout: refusals only as 503/409 with Retry-After.
    let tally = world.api.tally.lock().unwrap();
    if !tally.violations.is_empty() {
        // What the service logged as errors, to say why.
        let errors: Vec<String> = (1..=SERVES)
            .flat_map(|n| {
                world
                    .cluster
                    .serve_log(n)
                    .lines()
                    .filter(|line| line.contains("ERROR"))
                    .map(|line| format!("serve-{n}: {line}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        panic!(
            "answers the API must never give: {:#?}\nthe service's errors: {errors:#?}",
            tally.violations
        );
    }
    // Availability: the share of the answers given during the storm that were successes.
    let availability = tally.succeeded as f64 / tally.answered as f64;
    eprintln!(
        "cluster storm: {} requests answered, {} succeeded, {} refused with Retry-After, \
         {} attempts met a dead process; availability {:.3}; {} events, {} sync runs; \
         recovery: {:?}",
        tally.answered,
        tally.succeeded,
        tally.refused,
        tally.unreachable,
        availability,
        log.len(),
        requested.len(),
        recovery
    );
    assert!(tally.succeeded > 200, "a storm: {tally:?}");
    drop(tally);
}

/// `HARMONY_CLUSTER_SYNC=always` runs the same three servers with `sync_interval: always`:
/// each server writes every event to disk before it counts towards the acknowledgement, so an
/// acknowledged event survives even a power loss of every server at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_can_write_every_event_to_disk_before_acknowledging_it() {
    let dir = tempfile::Builder::new()
        .prefix("cluster")
        .tempdir_in("/tmp")
        .unwrap();
    let config = dir.path().join("harmony.toml");
    std::fs::write(&config, "").unwrap();
    let cluster = Cluster {
        dir,
        offset: Cluster::free_offset(),
        config,
        serves: 0,
        sync_always: true,
    };
    cluster.run(&["up"]).await;
    for n in 0..3u16 {
        let varz: Value = reqwest::get(format!(
            "http://127.0.0.1:{}/varz",
            8222 + n + cluster.offset
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(
            varz["jetstream"]["config"]["sync_always"],
            json!(true),
            "nats-{}: {}",
            n + 1,
            varz["jetstream"]["config"]
        );
    }
    let mut js = JetStreamConfig::new(cluster.nats_url());
    js.replicas = 3;
    let store = JetStreamEventStore::connect(js).await.unwrap();
    let stream = domain::StreamName::integration(IntegrationId::new());
    let events: Vec<_> = (0..5)
        .map(|n| eventstore::NewEvent {
            id: domain::EventId::new(),
            event_type: "ConnectionTested".into(),
            schema: 1,
            data: json!({"ok": true, "latency_ms": n, "answer": "fine"}),
            metadata: domain::Metadata {
                workspace: "acme".parse().unwrap(),
                owner: None,
                actor: domain::Actor::System("test".into()),
                correlation_id: uuid::Uuid::now_v7(),
                causation_id: None,
                occurred_at: Timestamp::now(),
            },
        })
        .collect();
    store
        .append(&stream, eventstore::ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!(store.read_stream(&stream, 1, 10).await.unwrap().len(), 5);
}
