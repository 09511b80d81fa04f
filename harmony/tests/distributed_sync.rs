//! Two `harmony serve` processes on one JetStream and one PostgreSQL share the sync work
//! queue: each run is done by exactly one of them, both take work, and when the process
//! running a sync is killed the other takes the run over and finishes it from its cursor.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use domain::aggregate::CommandContext;
use domain::integration::{Integration, IntegrationCommand, IntegrationEvent, SyncKind};
use domain::{Caller, IntegrationId, Principal, Role, StreamName, SyncId, Timestamp};
use eventstore::nats_server::{unique_namespace, TestNats};
use eventstore::waiting::eventually;
use eventstore::{JetStreamConfig, JetStreamEventStore, JetStreamRunDetailLog, RunDetailLog};
use fakes::hubspot::{self as fake, FakeHubSpot};
use secrecy::ExposeSecret;
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(60);

/// A running `harmony serve` and every line it wrote to standard error.
struct Process {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    async fn start(args: &[String], master_key: &str) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_harmony"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("HARMONY_LOG", "info")
            .env("HARMONY_MASTER_KEY", master_key)
            .env_remove("HARMONY_NATS_URL")
            .env_remove("HARMONY_DATABASE_URL")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let process = Self { child, lines };
        eventually(WAIT, "the server listens", || async {
            process.saw("listening on").then_some(())
        })
        .await;
        process
    }

    fn saw(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }

    fn runs(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("running a sync"))
            .count()
    }
}

struct Service {
    _dir: tempfile::TempDir,
    fake: FakeHubSpot,
    repo: Repository,
    vault: Vault,
    store: JetStreamEventStore,
    detail: JetStreamRunDetailLog,
    namespace: String,
    processes: Vec<Process>,
    /// The workspace each integration is connected in.
    workspaces: Mutex<BTreeMap<IntegrationId, String>>,
}

impl Service {
    async fn start() -> Self {
        let nats = TestNats::shared();
        let namespace = unique_namespace();
        let database = database::test_support::postgres_database().await;
        let fake = FakeHubSpot::start(250, 0).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("harmony.toml");
        std::fs::write(
            &config,
            format!(
                "[oauth.hubspot]\nclient_id = \"{}\"\nclient_secret = \"{}\"\ntoken_url = \"{}\"\n\n[endpoints]\nhubspot_api = \"{}\"\n",
                fake::CLIENT_ID,
                fake::CLIENT_SECRET,
                fake.server.base.join("oauth/v1/token").unwrap(),
                fake.server.base
            ),
        )
        .unwrap();
        let key = MasterKey::generate();
        let key_text = key.to_base64().expose_secret().to_owned();
        let mut processes = Vec::new();
        for n in 0..2 {
            let data = dir.path().join(format!("p{n}"));
            let args: Vec<String> = [
                "--data-dir",
                data.to_str().unwrap(),
                "--nats-url",
                &nats.url,
                "--nats-namespace",
                &namespace,
                "--database-url",
                &database,
                "--config",
                config.to_str().unwrap(),
                "--sync-lease-seconds",
                "3",
                "--sync-work-ack-wait-seconds",
                "3",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            processes.push(Process::start(&args, &key_text).await);
        }
        let mut js = JetStreamConfig::new(nats.url.clone());
        js.namespace = namespace.clone();
        let store = JetStreamEventStore::connect(js).await.unwrap();
        let detail = JetStreamRunDetailLog::open(&store).await.unwrap();
        let repo = Repository::new(Arc::new(store.clone()));
        let db = database::ServiceDb::connect_postgres(&database)
            .await
            .unwrap();
        let vault = Vault::new(db, key);
        Self {
            _dir: dir,
            fake,
            repo,
            vault,
            store,
            detail,
            namespace,
            processes,
            workspaces: Mutex::default(),
        }
    }

    /// Waits until both processes are asking the queue for work.
    async fn both_taking_work(&self) {
        let js = async_nats::jetstream::new(self.store.client().clone());
        let stream = format!("{}_WORK", self.namespace.to_ascii_uppercase());
        eventually(WAIT, "both processes wait for sync work", || async {
            let stream = js.get_stream(&stream).await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("sync_workers").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_waiting >= 2).then_some(())
        })
        .await;
    }

    /// An admin of `workspace`.
    fn admin(workspace: &str) -> CommandContext {
        CommandContext::new(
            Caller::User(Principal {
                user: "ada".parse().unwrap(),
                workspace: workspace.parse().unwrap(),
                role: Role::Admin,
            }),
            Timestamp::now(),
        )
    }

    /// A HubSpot connected in a workspace of its own (one HubSpot a workspace).
    async fn connect(&self) -> IntegrationId {
        let workspace = format!("w{}", uuid::Uuid::now_v7().simple());
        let id = self
            .fake
            .connect(
                &self.repo,
                &self.vault,
                &Self::admin(&workspace),
                &["oauth"],
                None,
            )
            .await
            .unwrap();
        self.workspaces.lock().unwrap().insert(id, workspace);
        id
    }

    async fn request(&self, id: IntegrationId) -> SyncId {
        let sync_id = SyncId::new();
        let admin = Self::admin(&self.workspaces.lock().unwrap()[&id]);
        self.repo
            .execute::<Integration>(
                &StreamName::integration(id),
                &IntegrationCommand::RequestSync {
                    claimed: false,
                    sync_id,
                    kind: SyncKind::Full,
                },
                &admin,
            )
            .await
            .unwrap();
        sync_id
    }

    async fn events(&self, id: IntegrationId) -> Vec<IntegrationEvent> {
        self.repo
            .store()
            .read_stream(&StreamName::integration(id), 1, 100_000)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.decode::<IntegrationEvent>().unwrap())
            .collect()
    }

    /// What run `sync_id` recorded in its detail (the runs stream).
    async fn detail_of(&self, sync_id: SyncId) -> Vec<IntegrationEvent> {
        self.detail
            .read(sync_id)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.decode::<IntegrationEvent>().unwrap())
            .collect()
    }

    async fn completed(&self, id: IntegrationId, sync_id: SyncId) -> u64 {
        eventually(WAIT, "the sync completes", || async {
            self.events(id).await.into_iter().find_map(|e| match e {
                IntegrationEvent::SyncCompleted(done) if done.sync_id == sync_id => {
                    Some(done.totals.pulled)
                }
                IntegrationEvent::SyncFailed(failed) if failed.sync_id == sync_id => {
                    panic!("the sync failed: {failed:?}")
                }
                _ => None,
            })
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_sync_queue_and_one_takes_over_from_a_dead_one() {
    let service = Service::start().await;
    service.both_taking_work().await;
    service.fake.faults.slow(Duration::from_millis(40));

    let mut runs = BTreeMap::new();
    for _ in 0..6 {
        let id = service.connect().await;
        let sync_id = service.request(id).await;
        runs.insert(id, sync_id);
    }
    for (id, sync_id) in &runs {
        assert_eq!(service.completed(*id, *sync_id).await, 250);
        let started = service
            .detail_of(*sync_id)
            .await
            .into_iter()
            .filter(|e| matches!(e, IntegrationEvent::SyncStarted(s) if s.sync_id == *sync_id))
            .count();
        assert_eq!(started, 1, "each run is started once, by one process");
    }
    let (first, second) = (service.processes[0].runs(), service.processes[1].runs());
    assert_eq!(first + second, 6, "six runs in all: {first} and {second}");
    assert!(
        first > 0 && second > 0,
        "both processes took work: {first} and {second}"
    );

    // The process running a slow sync dies: the other resumes the run from its cursor.
    service.fake.faults.slow(Duration::from_millis(400));
    let id = service.connect().await;
    let sync_id = service.request(id).await;
    let running = eventually(WAIT, "a process runs the sync", || async {
        service.processes.iter().position(|p| {
            p.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("running a sync") && l.contains(&sync_id.to_string()))
        })
    })
    .await;
    eventually(WAIT, "the run has made progress", || async {
        service
            .detail_of(sync_id)
            .await
            .iter()
            .any(|e| matches!(e, IntegrationEvent::SyncProgressed(_)))
            .then_some(())
    })
    .await;
    let mut service = service;
    service.processes[running].child.start_kill().unwrap();
    service.processes[running].child.wait().await.unwrap();
    service.fake.faults.slow(Duration::from_millis(20));
    assert_eq!(service.completed(id, sync_id).await, 250);
    let survivor = &service.processes[1 - running];
    assert!(
        survivor
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("running a sync") && l.contains(&sync_id.to_string())),
        "the surviving process finished the run"
    );
    // It continued the dead process's detail on the runs stream, and the outcome commits to
    // where that detail ends.
    let head = service
        .events(id)
        .await
        .into_iter()
        .find_map(|e| match e {
            IntegrationEvent::SyncCompleted(done) if done.sync_id == sync_id => done.detail,
            _ => None,
        })
        .expect("the resumed run recorded detail");
    let check = eventstore::check_detail(
        &service.detail,
        sync_id,
        head.version,
        &head.hash,
        domain::Timestamp::now(),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert!(
        matches!(check, eventstore::DetailCheck::Intact { .. }),
        "{check:?}"
    );
    let starts = service
        .detail_of(sync_id)
        .await
        .iter()
        .filter(|e| matches!(e, IntegrationEvent::SyncStarted(_)))
        .count();
    assert_eq!(starts, 1, "one start, continued by the survivor");
}
