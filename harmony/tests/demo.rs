//! `harmony serve --demo` as a newcomer runs it, the built binary: it prints the console's
//! address and three people's tokens; in a real browser the admin finds every app
//! connectable, Zendesk's first sync completed in its sync logs, connects Todoist with the
//! printed token and watches that sync complete too; each OAuth2 app connects through its
//! fake's consent page. Stopped, it removes what it made.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "../../tests/e2e/browser.rs"]
mod browser;
#[path = "support/readme.rs"]
mod readme;

/// What the demo printed: the console's base address, the tokens by role, the data directory.
#[derive(Debug, Default)]
struct Printed {
    address: String,
    tokens: Vec<(String, String)>,
    data_dir: std::path::PathBuf,
    text: String,
}

impl Printed {
    /// What follows `prefix` on the printed line that starts with it.
    fn after(&self, prefix: &str) -> &str {
        self.text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {}", self.text))
    }
}

/// The JSON a request answers.
async fn json(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

fn read_welcome(child: &mut Child) -> Printed {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.starts_with("Its state is in") {
            break;
        }
    }
    let address = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("console"))
        .map(|rest| rest.trim().trim_end_matches("/console").to_owned())
        .unwrap_or_else(|| panic!("no console address in {text}"));
    let tokens = text
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [role, _user, token] if token.starts_with("hst_") => {
                    Some(((*role).to_owned(), (*token).to_owned()))
                }
                _ => None,
            }
        })
        .collect();
    let data_dir = text
        .lines()
        .find_map(|l| l.strip_prefix("Its state is in "))
        .and_then(|rest| rest.split(" and goes").next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no data directory in {text}"));
    Printed {
        address,
        tokens,
        data_dir,
        text,
    }
}

/// `harmony serve --demo`, running until dropped, and what it printed.
struct Demo {
    child: Child,
    printed: Printed,
}

impl Demo {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_harmony"))
            .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
            // Whatever the environment says of a data directory or a real deployment, the
            // demo keeps to its own.
            .env("HARMONY_DATA_DIR", "/nonexistent/harmony")
            .env_remove("HARMONY_NATS_URL")
            .env_remove("HARMONY_DATABASE_URL")
            .env_remove("HARMONY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let printed = read_welcome(&mut child);
        Self { child, printed }
    }

    fn token(&self, role: &str) -> String {
        self.printed
            .tokens
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no {role} token in {}", self.printed.text))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            interrupt(&mut self.child);
        }
    }
}

/// Stops the demo as Ctrl-C does, and waits for it (killing it, and failing, if it has not
/// stopped within 30 seconds).
fn interrupt(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let (ended, wait) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || ended.send(child.wait().unwrap()));
        wait.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                panic!("the demo did not stop within 30 s of SIGINT")
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_every_app_connectable_and_a_completed_sync_in_the_console() {
    let mut demo = tokio::task::block_in_place(Demo::start);
    let printed = &demo.printed;
    let roles: Vec<&str> = printed.tokens.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["admin", "member", "auditor"], "{}", printed.text);
    assert!(printed.data_dir.exists(), "{}", printed.text);
    let token = |role: &str| demo.token(role);

    // Each printed token is one of its workspace's people, with its role.
    let http = reqwest::Client::new();
    for (role, token) in &printed.tokens {
        let me = json(
            http.get(format!("{}/v1/me", printed.address))
                .bearer_auth(token),
        )
        .await;
        assert_eq!(me["workspace"], "acme", "{me}");
        assert_eq!(me["role"], role.as_str(), "{me}");
    }

    let browser = browser::browser().await;
    browser.sign_in(&printed.address, &token("admin")).await;

    // Every app of the Marketplace is configured, none unavailable.
    browser.click("nav a[href='/console/apps']").await;
    let apps = browser.text("main").await;
    assert!(!apps.contains("Unavailable"), "{apps}");
    for app in [
        "hubspot",
        "salesforce",
        "zendesk",
        "twilio",
        "google-calendar",
        "gmail",
        "todoist",
        "caldav",
    ] {
        browser
            .click(&format!("a[href='/console/apps/{app}']"))
            .await;
        let page = browser.text("main").await;
        assert!(!page.contains("Unavailable"), "{app}: {page}");
        assert!(
            browser
                .c()
                .find(fantoccini::Locator::Css("main form button[type=submit]"))
                .await
                .is_ok(),
            "{app} has no connect button: {page}"
        );
        browser.c().back().await.unwrap();
    }
    browser.screenshot("demo-apps").await;

    // Zendesk, connected by the demo: its first sync completed.
    browser.click("nav a[href='/console/installed']").await;
    browser
        .click("main a[href^='/console/integrations/']")
        .await;
    browser.text_becomes("h1", "Zendesk").await;
    browser.text_becomes("#last-sync", "completed").await;
    browser.click("a[href$='/sync-logs']").await;
    browser.text_becomes("table", "completed").await;
    browser.screenshot("demo-zendesk-sync-logs").await;

    // Todoist, connected with the printed token: the sync it starts completes.
    let todoist = printed.after("Todoist: API token ");
    browser.click("nav a[href='/console/apps']").await;
    browser.click("a[href='/console/apps/todoist']").await;
    browser.fill("#api_token", todoist).await;
    browser.click("main form button[type=submit]").await;
    browser.path_becomes("/console/integrations/").await;
    browser.text_becomes("#status", "connected").await;
    browser.screenshot("demo-todoist-connected").await;
    browser.click("form[action$='/sync'] button").await;
    browser.text_becomes("#last-sync", "completed").await;
    browser.screenshot("demo-todoist-synced").await;
    drop(browser);

    // The OAuth2 apps connect too: each fake's authorization page consents at once and sends
    // the browser back to the service's callback.
    let salesforce = printed
        .after("Salesforce: Instance URL ")
        .split(';')
        .next()
        .expect("a URL");
    // One browser: the authorization is bound to the one that started it.
    let popup = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    for (app, fields) in [
        ("hubspot", serde_json::json!({})),
        (
            "salesforce",
            serde_json::json!({"instance_url": salesforce}),
        ),
        ("google-calendar", serde_json::json!({})),
        ("gmail", serde_json::json!({})),
    ] {
        let started = json(
            popup
                .post(format!(
                    "{}/v1/workspaces/acme/integrations",
                    printed.address
                ))
                .bearer_auth(token("admin"))
                .json(&serde_json::json!({"app": app, "fields": fields})),
        )
        .await;
        let authorize = started["authorization_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{app}: {started}"));
        let (_, page) = browser::popup(&popup, authorize).await;
        assert!(page.contains("\"ok\":true"), "{app}: {page}");
    }

    let data_dir = printed.data_dir.clone();
    let status = tokio::task::block_in_place(|| interrupt(&mut demo.child));
    assert!(status.success(), "the demo ended {status}");
    assert!(!data_dir.exists(), "the demo left {}", data_dir.display());
}

/// The demo is a mode of its own: never beside a real deployment's log, database or
/// configuration, and always with its workers.
#[test]
fn the_demo_refuses_a_real_deployments_storage_and_configuration() {
    for (flag, value) in [
        ("--nats-url", "nats://127.0.0.1:4222"),
        ("--database-url", "postgres://localhost/harmony"),
        ("--config", "harmony.toml"),
        ("--no-workers", ""),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_harmony"))
            .args(["serve", "--demo", flag])
            .args(Some(value).filter(|v| !v.is_empty()))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flag}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("cannot be used with") && said.contains("--demo"),
            "{flag}: {said}"
        );
    }
}

/// A client generated from the demo's `/openapi.json` by a standard generator
/// (openapi-typescript, with openapi-fetch: examples/typed-client) compiles against it and
/// walks the seed: Apps, connecting through the OAuth popup, Installed, test, full sync and
/// its sync log, mappings, reauth, a member refused, a personal integration, the auditor's
/// history, state as of a moment and verification, disconnect and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_openapi_document_walks_the_seed() {
    let demo = tokio::task::block_in_place(Demo::start);
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/typed-client");
    assert!(
        example.join("node_modules/openapi-typescript").exists(),
        "run ./scripts/test.sh, which installs the example's packages (npm ci)"
    );
    let npm = |script: &str| {
        let output = Command::new("npm")
            .args(["run", "--silent", script])
            .current_dir(&example)
            .env("HARMONY_URL", &demo.printed.address)
            .env("HARMONY_ADMIN_TOKEN", demo.token("admin"))
            .env("HARMONY_MEMBER_TOKEN", demo.token("member"))
            .env("HARMONY_AUDITOR_TOKEN", demo.token("auditor"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "npm run {script}: {said}");
        said
    };
    let schema = example.join("src/schema.d.ts");
    let _ = std::fs::remove_file(&schema);
    tokio::task::block_in_place(|| {
        npm("generate");
        assert!(
            std::fs::read_to_string(&schema)
                .unwrap()
                .contains("\"/v1/workspaces/{ws}/integrations/{id}/sync-logs\""),
            "the client is generated from the document"
        );
        npm("build");
        let walked = npm("walk");
        assert!(walked.contains("the walk is complete"), "{walked}");
    });
}

/// The README's first look at the API runs as written against the demo (on its own port):
/// each command answers what its comment says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_first_look_at_the_api_runs_against_the_demo() {
    let demo = tokio::task::block_in_place(Demo::start);
    let readme = readme::readme();
    let block = readme::sh_block_after(&readme, "## A first look at the API");
    // Every command but the event stream, which follows the log until stopped: it gets two
    // seconds. Each answer on a line of its own, for the checks below.
    let script = block
        .replace("http://127.0.0.1:8080", &demo.printed.address)
        .replace("curl -sN ", "curl -sN --max-time 2 ")
        .lines()
        .map(|line| format!("{line}\n"))
        .collect::<String>()
        .replace("\ncurl ", "\necho; curl ");
    let output = tokio::task::block_in_place(|| {
        Command::new("bash")
            .args(["-c", &script])
            .env("TOKEN", demo.token("admin"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let said = String::from_utf8_lossy(&output.stdout);
    for wanted in [
        "\"id\":\"hubspot\"",
        "\"app\":\"zendesk\"",
        "\"sync_id\":",
        "\"runs\":[",
        "\"IntegrationConnected\"",
        "\"intact\":true",
        "event: ",
    ] {
        assert!(said.contains(wanted), "no {wanted} in:\n{said}\n{script}");
    }
}
