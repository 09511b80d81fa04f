//! The `harmony` binary as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/readme.rs"]
mod readme;

fn harmony() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harmony"))
}

/// Starts `harmony serve` with `args` and waits for the address it announces.
fn serve(args: &[&str]) -> (Served, String) {
    let mut child = harmony()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("HARMONY_LOG", "info")
        .env_remove("HARMONY_NATS_URL")
        .env_remove("HARMONY_DATABASE_URL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server announces its address");
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on ".len()..];
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (Served(Some(child)), address)
}

/// A running `harmony serve`, killed if the test fails before stopping it.
struct Served(Option<std::process::Child>);

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stop_with_sigterm(mut served: Served) {
    let mut child = served.0.take().unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = exit
        .recv_timeout(Duration::from_secs(30))
        .expect("the server stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_opens_the_log_answers_healthz_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, address) = serve(&["--data-dir", dir.path().to_str().unwrap()]);
    let body: serde_json::Value = reqwest::blocking::get(format!("{address}/healthz"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["backend"], "sled");
    assert_eq!(body["read_models"], "sqlite");
    assert!(
        dir.path().join("log").is_dir()
            && dir.path().join("records").is_dir()
            && dir.path().join("read.db").is_file(),
        "the event log, the records and the read models live under --data-dir"
    );
    stop_with_sigterm(child);
}

#[test]
fn serve_with_nats_url_and_database_url_runs_distributed() {
    let nats = eventstore::nats_server::TestNats::shared();
    // A database of its own: the vault there knows only this process's master key.
    let database = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(database::test_support::postgres_database());
    let dir = tempfile::tempdir().unwrap();
    let namespace = eventstore::nats_server::unique_namespace();
    let (child, address) = serve(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--nats-url",
        &nats.url,
        "--nats-namespace",
        &namespace,
        "--database-url",
        &database,
    ]);
    let body: serde_json::Value = reqwest::blocking::get(format!("{address}/healthz"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["backend"], "jetstream");
    assert_eq!(body["read_models"], "postgres");
    assert_eq!(body["log_head"], 0);
    assert!(!dir.path().join("log").exists(), "no sled log on JetStream");
    assert!(
        !dir.path().join("read.db").exists(),
        "no SQLite with PostgreSQL"
    );
    stop_with_sigterm(child);
}

#[test]
fn serve_refuses_to_start_without_a_reachable_jetstream() {
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = harmony()
        .args(["serve", "--listen", "127.0.0.1:0", "--nats-timeout", "2"])
        .args(["--nats-url", &format!("nats://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("while opening the event log on NATS JetStream")
            && message.contains("cannot reach NATS"),
        "{message}"
    );
}

/// Runs `harmony bench <args> --quick --json` and returns its report, checking that it
/// succeeded and printed one JSON object and nothing else on standard output, and what it
/// wrote on standard error.
fn bench_json(args: &[&str]) -> (serde_json::Value, String) {
    let output = harmony()
        .arg("bench")
        .args(args)
        .args(["--quick", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    (report, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bench_json_prints_one_object_with_every_figure() {
    let scratch = tempfile::tempdir().unwrap();
    let (report, stderr) = bench_json(&["eventstore", "--dir", scratch.path().to_str().unwrap()]);
    assert_eq!(report["suite"], "eventstore");
    assert_eq!(report["backend"], "sled");
    let names: Vec<&str> = report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "append_w1",
            "append_w16",
            "append_w256",
            "append_batch100",
            "replay"
        ]
    );
    for figure in report["figures"].as_array().unwrap() {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["raw"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["ratio"].as_f64().is_some(), "{figure}");
    }
    assert!(!stderr.is_empty(), "progress goes to standard error");
}

#[test]
fn bench_sync_syncs_from_a_fake_provider_process_and_finds_nothing_to_publish_the_second_time() {
    let scratch = tempfile::tempdir().unwrap();
    let (report, _) = bench_json(&["sync", "--dir", scratch.path().to_str().unwrap()]);
    assert_eq!(report["suite"], "sync");
    let figures = report["figures"].as_array().unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sync_full",
            "sync_floor",
            "sync_unchanged",
            "sync_record_events_unchanged",
            "sync_rss_mb_20000"
        ]
    );
    for figure in &figures[..3] {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["raw"].as_f64().unwrap() > 0.0, "{figure}");
    }
    assert_eq!(figures[3]["value"].as_f64(), Some(0.0), "{}", figures[3]);
    assert!(figures[4]["value"].as_f64().unwrap() > 0.0);
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "the suite leaves nothing in its directory"
    );
}

#[test]
fn bench_gateway_loads_a_server_in_its_own_process_beside_the_raw_engines() {
    let scratch = tempfile::tempdir().unwrap();
    let (report, _) = bench_json(&["gateway", "--dir", scratch.path().to_str().unwrap()]);
    assert_eq!(report["suite"], "gateway");
    let figures = report["figures"].as_array().unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "get_installed_rps",
            "installed_query_rps",
            "get_installed_p50_ms",
            "get_installed_p99_ms",
            "post_sync_rps",
            "http_append_rps",
            "export_small_workspace_ms",
            "post_sync_p50_ms",
            "post_sync_p99_ms"
        ]
    );
    for figure in figures {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
    }
    // Against the HTTP ceiling, the raw appends (twice), and reading the whole log.
    for compared in [&figures[0], &figures[4], &figures[5], &figures[6]] {
        assert!(compared["raw"].as_f64().unwrap() > 0.0, "{compared}");
    }
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "the suite leaves nothing in its directory"
    );
}

#[test]
fn bench_projections_rebuilds_on_both_databases_and_leaves_no_schema_behind() {
    let database = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(database::test_support::postgres_database());
    let scratch = tempfile::tempdir().unwrap();
    let (report, _) = bench_json(&[
        "projections",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--database-url",
        &database,
    ]);
    assert_eq!(report["suite"], "projections");
    assert_eq!(report["backend"], "sqlite and postgres");
    let figures = report["figures"].as_array().unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for name in [
        "rebuild_sqlite",
        "installed_p99_ms",
        "sync_logs_p99_ms",
        "rebuild_postgres",
        "installed_postgres_p99_ms",
        "sync_logs_postgres_p99_ms",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for figure in figures {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        if figure["name"].as_str().unwrap().starts_with("rebuild_") {
            assert!(figure["raw"].as_f64().unwrap() > 0.0, "{figure}");
        }
    }
    let left: i64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'bench%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    });
    assert_eq!(left, 0, "the run drops the schemas it made");
}

#[test]
fn bench_on_jetstream_measures_beside_raw_publishes_and_cleans_up() {
    let nats = eventstore::nats_server::TestNats::shared();
    let (report, _) = bench_json(&[
        "eventstore",
        "--backend",
        "jetstream",
        "--nats-url",
        &nats.url,
    ]);
    assert!(
        report["backend"]
            .as_str()
            .unwrap()
            .starts_with("jetstream (nats-server 2."),
        "{report}"
    );
    let figures = report["figures"].as_array().unwrap();
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "append_w1",
            "append_w16",
            "append_w256",
            "append_batch100",
            "replay",
            "raw_publish_plain"
        ]
    );
    for figure in &figures[..5] {
        assert!(figure["raw"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["ratio"].as_f64().unwrap() > 0.0, "{figure}");
    }
    assert!(figures[5]["value"].as_f64().unwrap() > 0.0);
    // The run deleted the streams it made.
    let monitor = nats
        .monitoring_url
        .as_deref()
        .expect("the test server's monitoring address is known");
    let jsz: serde_json::Value = reqwest::blocking::get(format!("{monitor}/jsz?streams=true"))
        .unwrap()
        .json()
        .unwrap();
    let text = jsz.to_string();
    assert!(text.contains("\"account_details\""), "{text}");
    assert!(
        !text.contains("\"name\":\"BENCH"),
        "a benchmark stream was left: {text}"
    );
    let missing = harmony()
        .args(["bench", "eventstore", "--backend", "jetstream"])
        .env_remove("HARMONY_NATS_URL")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--nats-url"));
}

#[test]
fn log_copy_moves_a_log_to_jetstream_and_back_and_resumes() {
    let nats = eventstore::nats_server::TestNats::shared();
    let namespace = eventstore::nats_server::unique_namespace();
    let source = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use eventstore::{EventStore, RecordLog};
        let records = eventstore::SledRecordLog::open(
            source.path().join("records"),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let changes = (0..7)
            .map(|n| eventstore::RecordChange {
                id: domain::EventId::new(),
                workspace: "acme".parse().unwrap(),
                owner: None,
                integration: domain::IntegrationId::new(),
                object: "contacts".into(),
                record_id: format!("r{n}"),
                op: eventstore::RecordOp::Created,
                data: serde_json::json!({ "n": n }),
                content_hash: String::new(),
                sync_id: domain::SyncId::new(),
                occurred_at: domain::Timestamp::now(),
            })
            .collect();
        records.publish(changes).await.unwrap();
        let store = eventstore::SledEventStore::open(source.path().join("log")).unwrap();
        for i in 0..30 {
            let stream = eventstore::conformance::stream(&format!("s{}", i % 4));
            store
                .append(
                    &stream,
                    eventstore::ExpectedVersion::Any,
                    vec![
                        eventstore::conformance::event(i),
                        eventstore::conformance::event(i + 100),
                    ],
                )
                .await
                .unwrap();
        }
    });
    let copy = |from: &str, to: &str, from_ns: &str, to_ns: &str| {
        harmony()
            .args(["log", "copy", "--from", from, "--to", to])
            .args(["--from-namespace", from_ns, "--to-namespace", to_ns])
            .output()
            .unwrap()
    };
    let dir = source.path().to_str().unwrap();
    let output = copy(dir, &nats.url, "harmony", &namespace);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("copied 60 events (0 were already there) of 4 streams"),
        "{stdout}"
    );
    let again = copy(dir, &nats.url, "harmony", &namespace);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("copied 0 events (60 were already there)")
    );
    let restored = tempfile::tempdir().unwrap();
    let back = copy(
        &nats.url,
        restored.path().to_str().unwrap(),
        &namespace,
        "harmony",
    );
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(String::from_utf8_lossy(&back.stdout).contains("copied 60 events"));
    assert!(String::from_utf8_lossy(&back.stdout).contains(", 7 record changes and the detail of"));
    assert!(restored.path().join("log").is_dir());
    assert!(restored.path().join("records").is_dir());

    let missing = copy("/nonexistent/harmony", &nats.url, "harmony", &namespace);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("holds no event log"));
}

#[test]
fn bad_arguments_are_refused_with_a_message_and_a_failure_exit() {
    let output = harmony().args(["bench", "everything"]).output().unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("invalid value 'everything'"), "{message}");
    let output = harmony()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
}

/// Connects `apps` (one integration each, workspace acme, by admin ada) on `store`: HubSpot
/// for the workspace, the others (Gmail, Google Calendar) as ada's own.
async fn connect_apps(store: std::sync::Arc<dyn eventstore::EventStore>, apps: &[&str]) {
    let repository = command::repository::Repository::new(store);
    let ada = domain::testing::as_user("ada", domain::Role::Admin);
    for app in apps {
        let scope = if *app == "hubspot" {
            domain::catalog::AppScope::Workspace
        } else {
            domain::catalog::AppScope::Personal
        };
        let command = domain::testing::connect_command(app, scope, &[]);
        command::lifecycle::connect(
            &repository,
            &ada,
            command,
            command::lifecycle::DEFAULT_ABANDON_AFTER,
        )
        .await
        .unwrap();
    }
}

/// The apps Installed shows for ada of acme.
async fn installed_apps(db: &database::ServiceDb) -> Vec<String> {
    projections::installed::list(db, "acme", "ada")
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.app)
        .collect()
}

#[test]
fn projections_rebuild_replaces_the_read_models_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use eventstore::EventStore;
        let store = eventstore::SledEventStore::open(dir.path().join("log")).unwrap();
        connect_apps(std::sync::Arc::new(store), &["hubspot", "gmail"]).await;
        // A read model that has lost a row, as a damaged or stale one would.
        let db = database::ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let all = eventstore::SledEventStore::open(dir.path().join("log"))
            .unwrap()
            .read_all(1, 1000)
            .await
            .unwrap();
        for projection in projections::runner::Projection::ALL {
            projection.apply(&db, &all).await.unwrap();
        }
        let database::ServiceDb::Sqlite(pool) = &db else {
            unreachable!()
        };
        sqlx::query("DELETE FROM installed WHERE app = 'gmail'")
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(installed_apps(&db).await, ["hubspot"]);
        db.close().await;
    });

    let output = harmony()
        .args(["projections", "rebuild", "--data-dir", data_dir])
        .env_remove("HARMONY_NATS_URL")
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("rebuilt installed and sync_runs from"),
        "{said}"
    );
    runtime.block_on(async {
        let db = database::ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        assert_eq!(installed_apps(&db).await, ["gmail", "hubspot"]);
        db.close().await;
    });

    // A read model that does not exist, and a log in use by a running service.
    let output = harmony()
        .args([
            "projections",
            "rebuild",
            "--name",
            "everything",
            "--data-dir",
            data_dir,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("no read model called \"everything\"")
            && message.contains("installed, sync_runs"),
        "{message}"
    );
    let (served, _) = serve(&["--data-dir", data_dir]);
    let output = harmony()
        .args(["projections", "rebuild", "--data-dir", data_dir])
        .env_remove("HARMONY_NATS_URL")
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("stop the service"), "{message}");
    stop_with_sigterm(served);
}

#[test]
fn projections_rebuild_runs_beside_a_distributed_service() {
    let nats = eventstore::nats_server::TestNats::shared();
    let namespace = eventstore::nats_server::unique_namespace();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(async {
        let mut config = eventstore::JetStreamConfig::new(nats.url.clone());
        config.namespace = namespace.clone();
        let store = eventstore::JetStreamEventStore::connect(config)
            .await
            .unwrap();
        connect_apps(
            std::sync::Arc::new(store),
            &["hubspot", "gmail", "google-calendar"],
        )
        .await;
        database::test_support::postgres_database().await
    });
    let dir = tempfile::tempdir().unwrap();
    let storage = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--nats-url",
        &nats.url,
        "--nats-namespace",
        &namespace,
        "--database-url",
        &database,
    ];
    let (served, address) = serve(&storage);
    let health = || -> serde_json::Value {
        reqwest::blocking::get(format!("{address}/healthz"))
            .unwrap()
            .json()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while health()["projections"]["installed"]["lag_events"] != 0 {
        assert!(Instant::now() < deadline, "the service never caught up");
        std::thread::yield_now();
    }
    assert_eq!(health()["projections"]["installed"]["runner"], "running");

    let output = harmony()
        .args(["projections", "rebuild", "--name", "installed"])
        .args(storage)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.starts_with("rebuilt installed from "), "{said}");
    runtime.block_on(async {
        let db = database::ServiceDb::connect_postgres(&database)
            .await
            .unwrap();
        assert_eq!(
            installed_apps(&db).await,
            ["gmail", "google-calendar", "hubspot"]
        );
        db.close().await;
    });
    let body = health();
    assert_eq!(body["projections"]["installed"]["runner"], "running");
    assert_eq!(body["projections"]["installed"]["lag_events"], 0);
    stop_with_sigterm(served);
}

#[test]
fn serve_creates_a_private_master_key_and_vault_rotate_master_key_rewraps_under_a_new_one() {
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (served, _) = serve(&["--data-dir", data_dir]);
    stop_with_sigterm(served);
    let key_file = dir.path().join("master.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the master key is its owner's alone");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let old = adapters::vault::MasterKey::load_or_create(&key_file).unwrap();
    let secret = secrecy::SecretString::from("zendesk-api-token-93ab".to_owned());
    let reference = runtime.block_on(async {
        let db = database::ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let vault = adapters::vault::Vault::new(db.clone(), old);
        let reference = vault
            .put(domain::IntegrationId::new(), &secret)
            .await
            .unwrap();
        db.close().await;
        reference
    });

    let output = harmony()
        .args([
            "vault",
            "rotate-master-key",
            "--generate",
            "--data-dir",
            data_dir,
        ])
        .env_remove("HARMONY_MASTER_KEY")
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.starts_with("re-wrapped 1 data keys"), "{said}");
    let new = adapters::vault::MasterKey::load_or_create(&key_file).unwrap();
    assert!(said.contains(new.id()), "{said}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    runtime.block_on(async {
        let db = database::ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let vault = adapters::vault::Vault::new(db, new);
        assert_eq!(
            vault.get(&reference).await.unwrap().expose_secret(),
            "zendesk-api-token-93ab"
        );
    });

    let output = harmony()
        .args(["vault", "rotate-key", "--data-dir"])
        .arg(dir.path().join("elsewhere"))
        .args(["--generate"])
        .env_remove("HARMONY_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no master key"));
}

#[test]
fn tokens_are_created_shown_once_listed_without_their_secret_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let created = harmony()
        .args(["tokens", "create", "--workspace", "acme", "--user", "ada"])
        .args([
            "--role",
            "integration_manager",
            "--label",
            "ci",
            "--data-dir",
            data_dir,
        ])
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("hst_") && token.len() > 40, "{token}");
    let told = String::from_utf8_lossy(&created.stderr).into_owned();
    let id = told
        .split_whitespace()
        .find(|word| word.starts_with("tok_"))
        .unwrap()
        .to_owned();

    let listed = harmony()
        .args(["tokens", "list", "--json", "--data-dir", data_dir])
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(listed.status.success());
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(!text.contains(&token), "a listing never shows a token");
    let tokens: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(tokens[0]["role"], "integration_manager");
    assert_eq!(tokens[0]["revoked"], false);

    // A running service knows the token, and keeps what it found: the revocation, made by
    // another process, reaches it before the command returns.
    let (served, address) = serve(&["--data-dir", data_dir]);
    let me = |expected: u16| {
        let response = reqwest::blocking::Client::new()
            .get(format!("{address}/v1/me"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), expected);
    };
    me(200);
    me(200);
    let revoke = |expect: bool| {
        let output = harmony()
            .args(["tokens", "revoke", &id, "--data-dir", data_dir])
            .env_remove("HARMONY_DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(output.status.success(), expect, "{output:?}");
        output
    };
    revoke(true);
    me(401);
    stop_with_sigterm(served);
    let again = revoke(false);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live token"));

    let bad = harmony()
        .args(["tokens", "create", "--workspace", "acme", "--user", "ada"])
        .args(["--role", "owner", "--data-dir", data_dir])
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role `owner`"));
}

/// Rewrites the log under `dir` as someone with write access but without the checkpoint key
/// would: the same events, one of them altered, every chain hash recomputed.
async fn forge(dir: &std::path::Path, position: u64) {
    use eventstore::EventStore;
    let original = eventstore::SledEventStore::open(dir.join("log")).unwrap();
    let events = original.read_all(1, 100_000).await.unwrap();
    drop(original);
    let forged_dir = dir.join("forged");
    let forged = eventstore::SledEventStore::open(&forged_dir).unwrap();
    for event in events {
        let mut data = event.data().unwrap();
        if event.position == position {
            data["account_label"] = serde_json::json!("somebody else");
        }
        forged
            .append(
                &event.stream,
                eventstore::ExpectedVersion::from_version(event.version - 1),
                vec![eventstore::NewEvent {
                    id: event.id,
                    event_type: event.event_type.clone(),
                    schema: event.schema,
                    data,
                    metadata: event.metadata.clone(),
                }],
            )
            .await
            .unwrap();
    }
    drop(forged);
    std::fs::remove_dir_all(dir.join("log")).unwrap();
    std::fs::rename(forged_dir, dir.join("log")).unwrap();
}

#[test]
fn history_verify_and_export_read_the_log_and_a_rewritten_history_is_caught_by_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hubspot, connected_at) = runtime.block_on(async {
        use eventstore::EventStore;
        let store = eventstore::SledEventStore::open(dir.path().join("log")).unwrap();
        let store: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(store);
        connect_apps(store.clone(), &["hubspot", "gmail"]).await;
        let events = store.read_all(1, 1000).await.unwrap();
        let connected = events
            .iter()
            .find(|e| {
                e.event_type == "IntegrationConnected" && e.data().unwrap()["app"] == "hubspot"
            })
            .unwrap();
        (
            connected.stream.integration_id().unwrap().to_string(),
            connected.metadata.occurred_at,
        )
    });
    // The service signs the heads of the streams, at the latest when it stops.
    let (served, _) = serve(&["--data-dir", data_dir]);
    stop_with_sigterm(served);
    assert!(dir.path().join("checkpoints").is_dir());

    let run = |args: &[&str]| {
        harmony()
            .args(args)
            .args(["--data-dir", data_dir])
            .env_remove("HARMONY_NATS_URL")
            .env_remove("HARMONY_DATABASE_URL")
            .output()
            .unwrap()
    };
    let output = run(&["history", &hubspot]);
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("IntegrationConnected") && table.contains("user ada"),
        "{table}"
    );
    let output = run(&["history", &hubspot, "--json"]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["type"], "IntegrationConnected");
    let before = domain::Timestamp::from_unix_micros(connected_at.unix_micros() - 1).unwrap();
    let output = run(&[
        "history",
        &hubspot,
        "--as-of",
        &before.to_string(),
        "--json",
    ]);
    let then: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(then["version"], 0, "nothing had happened yet");
    assert!(then["installed"].is_null());
    let output = run(&[
        "history",
        &hubspot,
        "--as-of",
        &connected_at.to_string(),
        "--json",
    ]);
    let then: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(then["installed"]["status"], "connected");

    let output = run(&["verify", &hubspot]);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("intact") && said.contains("holds"), "{said}");
    let output = run(&["verify", "--all"]);
    assert!(output.status.success(), "{output:?}");

    let output = run(&["export", "--workspace", "acme"]);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["data"]["app"] == "gmail"));
    assert!(lines
        .iter()
        .all(|l| l["stream"].as_str().unwrap().starts_with("integration-")));

    // Bad arguments are named.
    let output = run(&["history", "not-an-id"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an integration id"));
    let output = run(&["verify"]);
    assert!(!output.status.success());

    // A rewritten history with every hash recomputed: the chain holds, the checkpoint does not.
    let position = runtime.block_on(async {
        use eventstore::EventStore;
        let store = eventstore::SledEventStore::open(dir.path().join("log")).unwrap();
        let events = store.read_all(1, 1000).await.unwrap();
        events
            .iter()
            .find(|e| e.stream.as_str() == format!("integration-{hubspot}"))
            .unwrap()
            .position
    });
    runtime.block_on(forge(dir.path(), position));
    let output = run(&["verify", "--all"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(&format!("integration-{hubspot}"))
            && message.contains("signed checkpoint")
            && message.contains("rewritten"),
        "{message}"
    );
    // An edit that leaves the chain alone is named at its link.
    runtime.block_on(async {
        let store = eventstore::SledEventStore::open(dir.path().join("log")).unwrap();
        store
            .tamper(position, |data| {
                data["account_label"] = serde_json::json!("x")
            })
            .unwrap();
    });
    let output = run(&["verify", &hubspot]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("broken at version 1"), "{message}");
    // The whole log's check, one pass, names the same link, and reports every stream first.
    let output = run(&["verify", "--all", "--json"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(&format!("integration-{hubspot} is broken at version 1")),
        "{message}"
    );
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let broken: Vec<&serde_json::Value> = reports.iter().filter(|r| r["intact"] == false).collect();
    assert_eq!(broken.len(), 1, "{reports:#?}");
    assert_eq!(broken[0]["stream"], format!("integration-{hubspot}"));
    assert!(reports.len() > 1, "every stream is reported: {reports:#?}");
}

#[test]
fn serve_with_log_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = harmony()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--log-json", "--data-dir"])
        .arg(dir.path())
        .env("HARMONY_LOG", "info")
        .env_remove("HARMONY_NATS_URL")
        .env_remove("HARMONY_DATABASE_URL")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let served = Served(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    let listening = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs that it listens");
        let entry: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(entry["level"].is_string(), "{entry}");
        if entry["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on http://"))
        {
            break entry;
        }
    };
    assert_eq!(
        listening["backend"], "sled",
        "fields sit beside the message"
    );
    stop_with_sigterm(served);
}

#[test]
fn every_file_the_service_creates_under_the_data_directory_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("harmony-data");
    let data = data_dir.to_str().unwrap();
    let created = harmony()
        .args(["tokens", "create", "--workspace", "acme", "--user", "ada"])
        .args(["--role", "admin", "--data-dir", data])
        .env_remove("HARMONY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let (served, address) = serve(&["--data-dir", data, "--checkpoint-seconds", "1"]);
    let client = reqwest::blocking::Client::new();
    let answer = client
        .get(format!("{address}/v1/workspaces/acme/integrations"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    stop_with_sigterm(served);

    let mut checked = 0;
    let mut pending = vec![data_dir.clone()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
        checked += 1;
    }
    assert!(
        data_dir.join("read.db").exists() && checked > 10,
        "checked {checked}"
    );
}

/// `harmony fake-provider` serves every provider: each fake prints its base URL first, then
/// the credentials it accepts and configuration that the service reads as it is, and answers
/// a request without credentials with its provider's refusal.
#[test]
fn every_provider_has_a_fake_whose_printed_configuration_the_service_reads() {
    use std::io::{BufRead, BufReader};
    // A request each fake refuses without credentials, as its provider does.
    let probes = [
        (
            "salesforce",
            "GET",
            "services/data/v60.0/query?q=SELECT+Id+FROM+Contact",
        ),
        ("google", "GET", "gmail/v1/users/me/profile"),
        ("zendesk", "GET", "acme/api/v2/ticket_fields"),
        (
            "twilio",
            "GET",
            "2010-04-01/Accounts/AC00000000000000000000000000000001",
        ),
        ("todoist", "GET", "api/v1/tasks"),
        ("caldav", "PROPFIND", "dav/calendars/jane/work/"),
    ];
    let http = reqwest::blocking::Client::new();
    for (name, method, path) in probes {
        let mut child = harmony()
            .args(["fake-provider", name, "--records", "3"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut base = String::new();
        stdout.read_line(&mut base).unwrap();
        let base = url::Url::parse(base.trim()).unwrap();
        let said: Vec<String> = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .take_while(|line| line != "serving until stopped")
            .collect();
        let config_at = said
            .iter()
            .position(|line| line == "in harmony.toml:")
            .unwrap_or_else(|| panic!("{name}: {said:?}"));
        let config = said[config_at + 1..].join("\n");
        if config.starts_with('[') {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("harmony.toml");
            std::fs::write(&file, &config).unwrap();
            let read = adapters::config::AdaptersConfig::load_with(Some(&file), |_| None)
                .unwrap_or_else(|error| panic!("{name}: {error}\n{config}"));
            let pointed = read
                .trusted_endpoints()
                .iter()
                .any(|url| url.as_str().starts_with(base.as_str()));
            assert!(
                pointed,
                "{name}: the configuration names another server\n{config}"
            );
        }
        let answer = http
            .request(method.parse().unwrap(), base.join(path).unwrap())
            .send()
            .unwrap();
        assert!(
            matches!(answer.status().as_u16(), 400 | 401),
            "{name}: {method} {path} without credentials answered {}",
            answer.status()
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// The providers' documentation: its configuration example is one the service reads (every
/// key in it exists, every table is an app), it names every `[endpoints]` key, and it shows
/// every fake provider.
#[test]
fn the_provider_docs_configuration_is_read_as_written_and_names_every_key_and_fake() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROVIDERS.md"))
            .unwrap();
    let start = readme
        .find("```toml\n# harmony.toml\n")
        .expect("the example")
        + "```toml\n".len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("harmony.toml");
    std::fs::write(&file, example).unwrap();
    let config = adapters::config::AdaptersConfig::load_with(Some(&file), |_| None)
        .unwrap_or_else(|error| panic!("{error}\n{example}"));
    assert_eq!(
        config.oauth.keys().collect::<Vec<_>>(),
        ["google-calendar", "salesforce"]
    );
    for key in [
        "hubspot_api",
        "google_calendar_api",
        "gmail_api",
        "todoist_api",
        "zendesk_api_template",
        "twilio_regions",
        "revoke_url",
        "issuer",
        "client_auth",
        "authorize_url",
        "token_url",
    ] {
        assert!(
            example.contains(&format!("\n{key} =")),
            "the example lacks {key}"
        );
    }
    let help = harmony()
        .args(["fake-provider", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .take_while(|word| *word != "Options:")
        .filter(|word| *word != "help")
        .collect();
    assert_eq!(commands.len(), 7, "{help}");
    for command in commands {
        assert!(
            readme.contains(&format!("harmony fake-provider {command} ")),
            "docs/PROVIDERS.md does not show `harmony fake-provider {command}`"
        );
    }
}

/// The README is read in one sitting: under 250 lines, a quick start of exactly two commands
/// (the service and every test), and every document it links to, and every document those
/// link to in turn, is there.
#[test]
fn the_readme_is_short_starts_in_two_commands_and_every_link_resolves() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let readme = readme::readme();
    assert!(
        readme.lines().count() < 250,
        "the README has {} lines",
        readme.lines().count()
    );
    let quick = readme::sh_block_after(&readme, "## Quick start");
    let commands: Vec<&str> = quick.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "{quick}");
    assert!(commands[0].starts_with("cargo run --release -p harmony -- serve"));
    assert!(commands[1].starts_with("./scripts/test.sh"));
    for doc in [
        "API",
        "CONSOLE",
        "PROVIDERS",
        "OPERATIONS",
        "CLUSTER",
        "AUDITING",
        "EVENTS",
        "SECURITY",
    ] {
        assert!(
            readme.contains(&format!("](docs/{doc}.md)")),
            "the README does not link docs/{doc}.md"
        );
    }
    // Every relative link of the README and of the documents under docs/.
    let mut pages = vec![root.join("README.md")];
    pages.extend(
        std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            let target = target.split('#').next().unwrap();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            let path = page.parent().unwrap().join(target);
            assert!(
                path.exists(),
                "{} links to {target}, which is not there",
                page.display()
            );
        }
    }
}

/// Appends to `dir`'s log two HubSpot runs that recorded detail — one ended 100 days ago, one
/// now — each as this release writes them: the request and the outcome in the integration's
/// stream, the start and a page in the run-detail log, the outcome committing to its head.
/// Returns the integration, the two runs (old, recent) and the recent outcome's position.
async fn two_runs_with_detail(dir: &std::path::Path) -> (String, [domain::SyncId; 2], u64) {
    use domain::integration::{
        RecordCounts, RunDetailHead, SyncCompleted, SyncKind, SyncProgressed, SyncRequested,
        SyncStarted, SyncTrigger,
    };
    use domain::IntegrationEvent as E;
    use eventstore::{EventStore, NewEvent, RunDetailLog};
    let store = eventstore::SledEventStore::open(dir.join("log")).unwrap();
    let store: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(store);
    connect_apps(store.clone(), &["hubspot"]).await;
    let connected = store
        .read_all(1, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.stream.integration_id().is_some())
        .unwrap();
    let stream = connected.stream.clone();
    let detail = eventstore::SledRunDetailLog::open(dir.join("run-detail")).unwrap();
    let mut runs = Vec::new();
    let mut outcome_at = 0;
    for days in [100u64, 0] {
        let at = domain::Timestamp::now().minus(std::time::Duration::from_secs(days * 86_400));
        let metadata = domain::Metadata {
            actor: domain::Actor::System("sync worker".into()),
            occurred_at: at,
            ..connected.metadata.clone()
        };
        let sync_id = domain::SyncId::new();
        let counts = RecordCounts {
            pulled: 3,
            created: 3,
            ..RecordCounts::default()
        };
        let tip = detail
            .append(
                sync_id,
                eventstore::DetailTip::EMPTY,
                vec![
                    NewEvent::from_domain(
                        &E::SyncStarted(SyncStarted {
                            sync_id,
                            cursor: None,
                        }),
                        metadata.clone(),
                    ),
                    NewEvent::from_domain(
                        &E::SyncProgressed(SyncProgressed {
                            sync_id,
                            object: "contacts".into(),
                            page: 1,
                            counts,
                            cursor: Some("{\"object\":1}".into()),
                        }),
                        metadata.clone(),
                    ),
                ],
            )
            .await
            .unwrap();
        let version = store.stream_version(&stream).await.unwrap().unwrap();
        let appended = store
            .append(
                &stream,
                eventstore::ExpectedVersion::from_version(version),
                vec![
                    NewEvent::from_domain(
                        &E::SyncRequested(SyncRequested {
                            sync_id,
                            kind: SyncKind::Full,
                            trigger: SyncTrigger::Schedule,
                            follow_up: false,
                        }),
                        metadata.clone(),
                    ),
                    NewEvent::from_domain(
                        &E::SyncCompleted(SyncCompleted {
                            sync_id,
                            totals: counts,
                            duration_ms: 40,
                            detail: Some(RunDetailHead {
                                version: tip.version,
                                hash: tip.hash.to_hex(),
                                started_at: at,
                                pages: 1,
                            }),
                        }),
                        metadata,
                    ),
                ],
            )
            .await
            .unwrap();
        outcome_at = appended.last_position;
        runs.push(sync_id);
    }
    (
        stream.integration_id().unwrap().to_string(),
        [runs[0], runs[1]],
        outcome_at,
    )
}

#[test]
fn verify_holds_once_run_detail_ages_out_and_catches_altered_detail_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hubspot, [old, recent], outcome) = runtime.block_on(two_runs_with_detail(dir.path()));
    let run = |args: &[&str]| {
        harmony()
            .args(args)
            .args(["--data-dir", data_dir])
            .env_remove("HARMONY_NATS_URL")
            .env_remove("HARMONY_DATABASE_URL")
            .env_remove("HARMONY_SYNC_DETAIL_RETENTION_DAYS")
            .output()
            .unwrap()
    };
    let said = |output: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let output = run(&["verify", "--all"]);
    assert!(output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains("2 runs with detail: 2 intact, 0 aged out"),
        "{}",
        said(&output)
    );

    // A retention of no days is refused, and nothing is removed.
    for bad in ["0", "-3"] {
        let output = run(&[
            "log",
            "age-out",
            &format!("--sync-detail-retention-days={bad}"),
        ]);
        assert!(!output.status.success());
        assert!(said(&output).contains("at least 1"), "{}", said(&output));
    }
    let output = run(&["log", "age-out"]);
    assert!(output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains("aged out the detail of 1 sync runs"),
        "{}",
        said(&output)
    );
    runtime.block_on(async {
        use eventstore::RunDetailLog;
        let detail = eventstore::SledRunDetailLog::open(dir.path().join("run-detail")).unwrap();
        assert!(detail.read(old).await.unwrap().is_empty());
        assert_eq!(detail.read(recent).await.unwrap().len(), 2);
    });
    // The history still verifies: the old run's detail is gone past the retention.
    let output = run(&["verify", &hubspot]);
    assert!(output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains("2 runs with detail: 1 intact, 1 aged out"),
        "{}",
        said(&output)
    );
    // The state as of a moment, the export and a copy of the log take the history as it is.
    let output = run(&[
        "history",
        &hubspot,
        "--as-of",
        &domain::Timestamp::now().to_string(),
    ]);
    assert!(output.status.success(), "{}", said(&output));
    let output = run(&["export", "--workspace", "acme"]);
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains("SyncCompleted"))
            .count(),
        2
    );
    let copy = dir.path().join("copy");
    let output = harmony()
        .args([
            "log",
            "copy",
            "--from",
            data_dir,
            "--to",
            copy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains("the detail of 1 sync runs"),
        "{}",
        said(&output)
    );
    let output = harmony()
        .args(["verify", "--all", "--data-dir", copy.to_str().unwrap()])
        .env_remove("HARMONY_NATS_URL")
        .env_remove("HARMONY_DATABASE_URL")
        .env_remove("HARMONY_SYNC_DETAIL_RETENTION_DAYS")
        .output()
        .unwrap();
    assert!(
        output.status.success() && said(&output).contains("1 intact, 1 aged out"),
        "{}",
        said(&output)
    );
    // Had the retention been longer, that detail would be missing.
    let output = run(&["verify", "--all", "--sync-detail-retention-days", "200"]);
    assert!(!output.status.success());
    assert!(
        said(&output).contains(&format!("the run {old}")) && said(&output).contains("missing"),
        "{}",
        said(&output)
    );

    // Detail altered behind the chain's back is caught…
    runtime.block_on(async {
        let detail = eventstore::SledRunDetailLog::open(dir.path().join("run-detail")).unwrap();
        detail
            .tamper(recent, 2, |data| {
                data["counts"]["created"] = serde_json::json!(0)
            })
            .unwrap();
    });
    let output = run(&["verify", &hubspot]);
    assert!(!output.status.success());
    assert!(
        said(&output).contains(&format!("the run {recent}"))
            && said(&output).contains("run detail altered"),
        "{}",
        said(&output)
    );
    // …and so is an outcome altered to commit to other detail: its own link breaks.
    runtime.block_on(async {
        let store = eventstore::SledEventStore::open(dir.path().join("log")).unwrap();
        store
            .tamper(outcome, |data| {
                data["detail"]["hash"] = serde_json::json!("00".repeat(32))
            })
            .unwrap();
    });
    let output = run(&["verify", &hubspot]);
    assert!(!output.status.success());
    assert!(
        said(&output).contains("is broken at version"),
        "{}",
        said(&output)
    );
}
