//! A headless Chromium driven over WebDriver (Debian's chromedriver, started per browser),
//! with the few verbs the console's tests use, and the OAuth popup as a plain HTTP client
//! walks it. Shared by the console's tests and the demo's
//! (`harmony/tests/demo.rs`, which includes this file).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventstore::waiting::eventually;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// A chromedriver of its own and a headless Chromium session; both go when dropped.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    /// Chromium's profile and chromedriver's temporary files: removed after both are gone.
    _scratch: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session first (Chromium exits with it), then the driver.
        if let Some(client) = self.client.take() {
            let _ = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(client.close())
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn browser() -> Browser {
    browser_with(true).await
}

/// A browser, with JavaScript on or off.
pub async fn browser_with(javascript: bool) -> Browser {
    let chromedriver =
        std::env::var("HARMONY_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let chromium = std::env::var("HARMONY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let driver = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        // What the browser writes to its temporary directory goes in ours.
        .env("TMPDIR", scratch.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{chromedriver} does not start ({e}): run ./scripts/test.sh, which installs it")
        });
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1100,900",
            format!("--user-data-dir={}", scratch.path().join("profile").display()),
            format!("--blink-settings=scriptEnabled={javascript}")]}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = eventually(WAIT, "chromedriver answers", || {
        let capabilities = capabilities.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    Browser {
        client: Some(client),
        driver,
        _scratch: scratch,
    }
}

impl Browser {
    pub fn c(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    pub async fn screenshot(&self, name: &str) {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.c().screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The element `css` selects, once it is there.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.c()
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    pub async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    pub async fn fill(&self, css: &str, value: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .send_keys(value)
            .await
            .unwrap();
    }

    pub async fn sign_in(&self, address: &str, token: &str) {
        self.c().goto(&format!("{address}/console")).await.unwrap();
        self.fill("#token", token).await;
        self.click("form button[type=submit]").await;
        eventually(WAIT, "signed in", || async {
            self.c()
                .current_url()
                .await
                .ok()
                .filter(|u| u.path() == "/console/installed")
        })
        .await;
    }

    pub async fn path_becomes(&self, prefix: &str) -> String {
        eventually(WAIT, &format!("the page becomes {prefix}…"), || async {
            let url = self.c().current_url().await.ok()?;
            url.path()
                .starts_with(prefix)
                .then(|| url.path().to_owned())
        })
        .await
    }

    pub async fn text_becomes(&self, css: &str, wanted: &str) {
        eventually(WAIT, &format!("{css} says {wanted}"), || async {
            let element = self.c().find(Locator::Css(css)).await.ok()?;
            let text = element.text().await.ok()?;
            text.contains(wanted).then_some(())
        })
        .await;
    }
}

/// The OAuth popup, in `browser` (which does not follow redirects): opens `authorization_url`
/// at the (fake) provider, which consents at once and redirects to the service's callback;
/// answers the callback URL and the callback page.
pub async fn popup(browser: &reqwest::Client, authorization_url: &str) -> (String, String) {
    let consent = browser.get(authorization_url).send().await.unwrap();
    let callback = consent.headers()["location"].to_str().unwrap().to_owned();
    let page = browser.get(&callback).send().await.unwrap();
    let html = page.text().await.unwrap();
    (callback, html)
}
