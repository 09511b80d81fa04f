//! A `nats-server` with JetStream for tests: started on free loopback ports with its own
//! storage, stopped (SIGKILL) and its storage deleted when the guard is dropped.
//!
//! The server runs with the repository's `nats.conf` (so tests exercise the production
//! JetStream settings, `sync_interval: always` among them), with only the addresses and the
//! store directory replaced. The binary is the one `HARMONY_NATS_SERVER` names — the test
//! script installs the pinned release and sets it — or else `nats-server` on the `PATH`.
//!
//! Test support (the `test-support` feature): a failure to start panics with what to do.
#![allow(clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The repository's JetStream configuration.
pub const NATS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats.conf");

/// A running server; dropping it kills the server and deletes its storage.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    /// Client URL, e.g. `nats://127.0.0.1:41234`.
    pub url: String,
    /// The HTTP monitoring endpoint, e.g. `http://127.0.0.1:41235`.
    pub monitoring_url: String,
    store_dir: PathBuf,
    // Declared last: deleted after the server is killed.
    dir: tempfile::TempDir,
}

/// The server binary tests use.
pub fn binary() -> PathBuf {
    std::env::var_os("HARMONY_NATS_SERVER")
        .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// `nats.conf` with the listen and monitoring addresses on free loopback ports and the store
/// in `store_dir`.
fn test_config(store_dir: &Path) -> String {
    let conf = std::fs::read_to_string(NATS_CONF).expect("nats.conf is readable");
    conf.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("listen:") {
                "listen: 127.0.0.1:-1".to_owned()
            } else if trimmed.starts_with("http:") {
                "http: 127.0.0.1:-1".to_owned()
            } else if trimmed.starts_with("store_dir:") {
                format!("  store_dir: {:?}", store_dir.display().to_string())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `nats.conf` text without its `jetstream { … }` block.
fn without_jetstream(conf: &str) -> String {
    let mut out = Vec::new();
    let mut depth = 0usize;
    for line in conf.lines() {
        if depth == 0 && line.trim_start().starts_with("jetstream") {
            depth = line.matches('{').count();
            continue;
        }
        if depth > 0 {
            depth += line.matches('{').count();
            depth -= line.matches('}').count();
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

/// Runs the server with `config` and waits until it listens: (child, client URL, monitoring URL).
fn spawn(config: &Path) -> (Child, String, String) {
    let mut child = Command::new(binary())
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot start {} ({error}): run ./scripts/test.sh, which installs the pinned nats-server, \
                 or set HARMONY_NATS_SERVER",
                binary().display()
            )
        });
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining the log after start-up so the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut url, mut monitoring_url) = (None, None);
    let mut log = Vec::new();
    while url.is_none() || monitoring_url.is_none() {
        let Ok(line) = received.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            let _ = child.kill();
            panic!(
                "nats-server did not become ready in 30 s; its log:\n{}",
                log.join("\n")
            );
        };
        if let Some(address) = line.split("Listening for client connections on ").nth(1) {
            url = Some(format!("nats://{}", address.trim()));
        }
        if let Some(address) = line.split("Starting http monitor on ").nth(1) {
            monitoring_url = Some(format!("http://{}", address.trim()));
        }
        log.push(line);
    }
    (
        child,
        url.expect("set above"),
        monitoring_url.expect("set above"),
    )
}

impl NatsServer {
    /// Starts a server and waits (up to 30 s) until it accepts clients.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// A server without JetStream, for checking that the service refuses it.
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store_dir = dir.path().join("store");
        let config = dir.path().join("nats.conf");
        let mut text = test_config(&store_dir);
        if !jetstream {
            text = without_jetstream(&text);
        }
        std::fs::write(&config, text).expect("the test configuration is written");
        let (child, url, monitoring_url) = spawn(&config);
        Self {
            child,
            url,
            monitoring_url,
            store_dir,
            dir,
        }
    }

    /// Kills the server (SIGKILL) and leaves it down until [`NatsServer::start_again`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same ports with the same store, as after a crash.
    pub fn start_again(&mut self) {
        self.kill();
        let config = self.dir.path().join("nats.conf");
        let text = std::fs::read_to_string(&config).expect("the configuration is still there");
        let port = |url: &str| {
            url.rsplit(':')
                .next()
                .expect("a URL with a port")
                .to_owned()
        };
        let text = text
            .lines()
            .map(|line| {
                if line.starts_with("listen:") {
                    format!("listen: 127.0.0.1:{}", port(&self.url))
                } else if line.starts_with("http:") {
                    format!("http: 127.0.0.1:{}", port(&self.monitoring_url))
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&config, text).expect("the configuration is rewritten");
        let (child, url, _) = spawn(&config);
        assert_eq!(url, self.url, "the server came back on another address");
        self.child = child;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where JetStream keeps its files; gone once the guard is dropped.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The directory holding the configuration and the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JetStream server a test uses: the one the test script started for the whole run
/// (`HARMONY_TEST_NATS_URL`), or else a server of the test's own, stopped when this is dropped.
/// Tests that share a server keep apart by each using a [`unique_namespace`].
#[derive(Debug)]
pub struct TestNats {
    pub url: String,
    /// The HTTP monitoring endpoint, where known (`HARMONY_TEST_NATS_MONITOR`).
    pub monitoring_url: Option<String>,
    /// The test's own server, kept until the test ends.
    _own: Option<NatsServer>,
}

impl TestNats {
    pub fn shared() -> Self {
        match std::env::var("HARMONY_TEST_NATS_URL") {
            Ok(url) if !url.is_empty() => Self {
                url,
                monitoring_url: std::env::var("HARMONY_TEST_NATS_MONITOR").ok(),
                _own: None,
            },
            _ => {
                let server = NatsServer::start();
                Self {
                    url: server.url.clone(),
                    monitoring_url: Some(server.monitoring_url.clone()),
                    _own: Some(server),
                }
            }
        }
    }
}

/// A namespace no other test uses: streams `T…_EVENTS`, subjects `t….events.>`.
pub fn unique_namespace() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// A JetStream store in a fresh namespace on `nats`.
pub async fn fresh_store(nats: &TestNats) -> crate::JetStreamEventStore {
    let mut config = crate::JetStreamConfig::new(nats.url.clone());
    config.namespace = unique_namespace();
    crate::JetStreamEventStore::connect(config)
        .await
        .expect("the test's JetStream server accepts the store")
}
