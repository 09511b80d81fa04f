//! `harmony serve --demo`: the service with every provider faked on loopback, in a data
//! directory of its own that goes when it stops, a workspace with an admin, a member and an
//! auditor, and one integration connected and syncing, so the console has something live to
//! show from the first minute. Nothing is enabled this way without the flag, and nothing of a
//! demo reaches a real provider.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use domain::{Role, UserId, WorkspaceId};
use secrecy::ExposeSecret;
use serde_json::json;

use super::fake_provider::{self as fakes, Described, Kind, Running};

/// The demo's workspace.
pub const WORKSPACE: &str = "acme";
/// Who signs in, by role: (role, user).
pub const PEOPLE: [(&str, &str); 3] = [("admin", "ada"), ("member", "max"), ("auditor", "alan")];
/// Records of each kind every fake serves.
const RECORDS: u64 = 40;

/// The fakes, running, and the data directory the demo keeps its state in.
pub struct Demo {
    _fakes: Vec<Running>,
    described: Vec<Described>,
    dir: tempfile::TempDir,
    /// The configuration pointing every app at its fake.
    pub adapters: adapters::config::AdaptersConfig,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Starts every fake and writes the configuration that points the service at them into a
    /// new data directory.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("harmony-demo-")
            .tempdir()
            .context("while creating the demo's data directory")?;
        let hubspot = ::fakes::hubspot::FakeHubSpot::start(RECORDS * 5, RECORDS).await?;
        let mut described = vec![fakes::hubspot_described(&hubspot.server.base)];
        let mut running: Vec<Running> = vec![Box::new(hubspot)];
        for kind in [
            Kind::Salesforce,
            Kind::Google,
            Kind::Zendesk,
            Kind::Twilio,
            Kind::Todoist,
            Kind::Caldav,
        ] {
            let (fake, about) = fakes::start(kind, RECORDS).await?;
            running.push(fake);
            described.push(about);
        }
        let file = dir.path().join("harmony.toml");
        let all: Vec<&Described> = described.iter().collect();
        std::fs::write(&file, Described::config_for_all(&all))
            .context("while writing the demo's harmony.toml")?;
        // The demo's own file alone: no HARMONY_OAUTH_* of the environment points it elsewhere.
        let adapters = adapters::config::AdaptersConfig::load_with(Some(&file), |_| None)?;
        Ok(Self {
            _fakes: running,
            described,
            dir,
            adapters,
        })
    }

    /// Where the demo keeps its state.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The outbound policy: the fakes are on loopback, and a CalDAV server URL is typed by
    /// the user, so loopback is reachable in a demo.
    pub fn outbound(&self) -> adapters::outbound::OutboundPolicy {
        adapters::outbound::OutboundPolicy::new(vec![adapters::outbound::parse_allow(
            "127.0.0.0/8",
        )
        .expect("a valid range")])
    }

    /// Creates the workspace's people's tokens, connects Zendesk as the admin and syncs it,
    /// and prints how to sign in and connect the rest.
    pub async fn welcome(
        &self,
        base: &url::Url,
        db: &projections::ServiceDb,
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<()> {
        let workspace: WorkspaceId = WORKSPACE.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut tokens = Vec::new();
        for (role, user) in PEOPLE {
            let user: UserId = user.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let role: Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let issued = crate::tokens::create(db, &workspace, &user, role, "demo", false).await?;
            tokens.push((role, user, issued.token));
        }
        let admin = tokens[0].2.expose_secret().to_owned();
        let zendesk = connect_zendesk(base, &admin).await;

        let console = base.join("console")?;
        let mut text = format!(
            "\nHarmony Sync demo: every provider is a fake on this machine; nothing leaves it.\n\n\
             \x20 console  {console}\n\
             \x20 API      {base}v1/workspaces/{WORKSPACE}/…   (OpenAPI: {base}openapi.json)\n\n\
             Sign in to the console (or send `Authorization: Bearer …`) as someone of workspace \
             {WORKSPACE}:\n"
        );
        for (role, user, token) in &tokens {
            text.push_str(&format!(
                "  {:<8} {:<5} {}\n",
                role.to_string(),
                user.to_string(),
                token.expose_secret()
            ));
        }
        let zendesk_connected = zendesk.is_ok();
        match zendesk {
            Ok(()) => text.push_str(
                "\nZendesk is connected for the workspace and its first sync is running: \
                 Installed > Zendesk > Sync logs.\n",
            ),
            Err(error) => text.push_str(&format!("\nZendesk could not be connected: {error:#}\n")),
        }
        text.push_str("To connect the others, from Apps:\n");
        text.push_str(
            "  HubSpot, Google Calendar, Gmail: Connect; the fake provider consents at once\n",
        );
        for about in &self.described {
            let how = match about.name {
                "Salesforce" => format!("Instance URL {}; then it consents at once", about.base),
                "Zendesk" if zendesk_connected => continue,
                "Zendesk" | "Twilio" | "Todoist" | "CalDAV" => about.credentials.clone(),
                _ => continue,
            };
            text.push_str(&format!("  {}: {how}\n", about.name));
        }
        text.push_str(&format!(
            "\nIts state is in {} and goes when the demo stops (Ctrl-C).\n",
            self.dir.path().display()
        ));
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

/// Connects the demo's Zendesk as `admin`, over the service's own API, schedules it every
/// five minutes and asks for a first sync.
async fn connect_zendesk(base: &url::Url, admin: &str) -> anyhow::Result<()> {
    let (subdomain, email, token) = fakes::ZENDESK;
    let http = reqwest::Client::new();
    let integrations = base.join(&format!("v1/workspaces/{WORKSPACE}/integrations"))?;
    let answer = http
        .post(integrations.clone())
        .bearer_auth(admin)
        .json(&json!({"app": "zendesk", "fields": {
            "subdomain": subdomain, "email": email, "api_token": token}}))
        .send()
        .await?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await?;
    let id = body["integration_id"]
        .as_str()
        .with_context(|| format!("the connect answered {status}: {body}"))?;
    let at = |what: &str| integrations.join(&format!("integrations/{id}/{what}"));
    for (what, method, body) in [
        (
            "schedule",
            reqwest::Method::PUT,
            Some(json!({"every_minutes": 5})),
        ),
        ("sync", reqwest::Method::POST, None),
    ] {
        let mut request = http.request(method, at(what)?).bearer_auth(admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "{what} answered {}: {}",
            answer.status(),
            answer.text().await.unwrap_or_default()
        );
    }
    Ok(())
}
