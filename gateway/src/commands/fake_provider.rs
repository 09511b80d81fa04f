//! `harmony fake-provider`: a provider's fake on loopback, speaking its real wire format, to
//! try the service without a provider account (and for `harmony bench sync`, which runs one in
//! a process of its own).

use std::io::Write;

use anyhow::Context;

/// `harmony fake-provider hubspot`.
pub async fn fake_hubspot(args: &crate::cli::FakeHubSpotArgs) -> anyhow::Result<()> {
    let fake = fakes::hubspot::FakeHubSpot::start_on(args.contacts, args.companies, args.listen)
        .await
        .with_context(|| format!("while listening on {}", args.listen))?;
    if let Some(token) = &args.accept_token {
        fake.auth.accept(token);
    }
    let described = hubspot_described(&fake.server.base);
    announce(&described)?;
    eprintln!(
        "fake HubSpot: {} contacts, {} companies; {}\nin harmony.toml:\n{}\nserving until stopped",
        args.contacts,
        args.companies,
        described.credentials,
        described.config()
    );
    crate::shutdown_signal().await;
    Ok(())
}

/// What a fake accepts and how the service is pointed at it.
pub(crate) struct Described {
    pub(crate) base: url::Url,
    pub(crate) name: &'static str,
    /// The credentials it accepts, in words.
    pub(crate) credentials: String,
    /// The `[oauth.<app>]` tables of `harmony.toml` for its OAuth clients.
    pub(crate) oauth: Vec<String>,
    /// The `[endpoints]` lines (`key = "value"`) that point the service at it.
    pub(crate) endpoints: Vec<String>,
}

impl Described {
    /// The `harmony.toml` lines that point the service at this fake alone.
    fn config(&self) -> String {
        if self.oauth.is_empty() && self.endpoints.is_empty() {
            "(none: the server URL is a field of the connection)".to_owned()
        } else {
            Self::config_for_all(&[self])
        }
    }

    /// One `harmony.toml` for all of `fakes`.
    pub(crate) fn config_for_all(fakes: &[&Described]) -> String {
        let mut parts: Vec<String> = fakes.iter().flat_map(|f| f.oauth.clone()).collect();
        let endpoints: Vec<&str> = fakes
            .iter()
            .flat_map(|f| f.endpoints.iter().map(String::as_str))
            .collect();
        if !endpoints.is_empty() {
            parts.push(format!("[endpoints]\n{}", endpoints.join("\n")));
        }
        parts.join("\n")
    }
}

/// The `[oauth.<app>]` table for a fake's OAuth client, its authorize, token and revoke
/// endpoints at `paths` under `base`.
fn oauth_table(app: &str, (id, secret): (&str, &str), base: &url::Url, paths: [&str; 3]) -> String {
    let [authorize, token, revoke] = paths;
    format!(
        "[oauth.{app}]\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         authorize_url = \"{base}{authorize}\"\ntoken_url = \"{base}{token}\"\n\
         revoke_url = \"{base}{revoke}\""
    )
}

/// HubSpot's fake at `base`, described.
pub(crate) fn hubspot_described(base: &url::Url) -> Described {
    use fakes::hubspot::{CLIENT_ID, CLIENT_SECRET};
    Described {
        base: base.clone(),
        name: "HubSpot",
        credentials: format!("OAuth client id {CLIENT_ID}, secret {CLIENT_SECRET}"),
        oauth: vec![oauth_table(
            "hubspot",
            (CLIENT_ID, CLIENT_SECRET),
            base,
            [
                "oauth/authorize",
                "oauth/v1/token",
                "oauth/v1/refresh-tokens/",
            ],
        )],
        endpoints: vec![format!("hubspot_api = \"{base}\"")],
    }
}

/// Prints a fake's base URL on the first line of standard output.
fn announce(described: &Described) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", described.base)?;
    stdout.flush()?;
    Ok(())
}

/// `harmony fake-provider <salesforce|google|zendesk|twilio|todoist|caldav>`.
pub async fn fake(command: &crate::cli::FakeProviderCommand) -> anyhow::Result<()> {
    use crate::cli::FakeProviderCommand as C;
    let (kind, args) = match command {
        C::Hubspot(_) => anyhow::bail!("HubSpot's fake has its own options"),
        C::Salesforce(args) => (Kind::Salesforce, args),
        C::Google(args) => (Kind::Google, args),
        C::Zendesk(args) => (Kind::Zendesk, args),
        C::Twilio(args) => (Kind::Twilio, args),
        C::Todoist(args) => (Kind::Todoist, args),
        C::Caldav(args) => (Kind::Caldav, args),
    };
    // The fake is kept alive (its server stops when dropped) until the signal.
    let (_fake, described) = start(kind, args.records).await?;
    announce(&described)?;
    eprintln!(
        "fake {}: {}\nin harmony.toml:\n{}\nserving until stopped",
        described.name,
        described.credentials,
        described.config()
    );
    crate::shutdown_signal().await;
    Ok(())
}

/// The fakes besides HubSpot's.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Salesforce,
    Google,
    Zendesk,
    Twilio,
    Todoist,
    Caldav,
}

/// A running fake: its server stops when this is dropped.
pub(crate) type Running = Box<dyn std::any::Any + Send>;

/// Zendesk's fake: the subdomain, agent email and API token it accepts.
pub(crate) const ZENDESK: (&str, &str, &str) = ("acme", "agent@acme.example", "fake-zendesk-token");
/// Twilio's fake: the account SID and auth token it accepts (region us1).
pub(crate) const TWILIO: (&str, &str) = ("AC00000000000000000000000000000001", "fake-twilio-token");
/// Todoist's fake: the API token it accepts.
pub(crate) const TODOIST_TOKEN: &str = "fake-todoist-token";
/// CalDAV's fake: the username and app password it accepts.
pub(crate) const CALDAV: (&str, &str) = ("jane", "fake-caldav-password");

/// Starts the fake of `kind` with `records` of each of its kinds of record, on loopback.
pub(crate) async fn start(kind: Kind, records: u64) -> anyhow::Result<(Running, Described)> {
    use fakes;
    Ok(match kind {
        Kind::Salesforce => {
            let fake = fakes::salesforce::FakeSalesforce::start(records, records).await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Salesforce",
                credentials: format!(
                    "OAuth client id {}, secret {}",
                    fakes::salesforce::CLIENT_ID,
                    fakes::salesforce::CLIENT_SECRET
                ),
                endpoints: Vec::new(),
                oauth: vec![oauth_table(
                    "salesforce",
                    (
                        fakes::salesforce::CLIENT_ID,
                        fakes::salesforce::CLIENT_SECRET,
                    ),
                    &base,
                    [
                        "services/oauth2/authorize",
                        "services/oauth2/token",
                        "services/oauth2/revoke",
                    ],
                )],
                base,
            };
            (Box::new(fake), described)
        }
        Kind::Google => {
            let fake = fakes::google::FakeGoogle::start(records, records).await?;
            let base = fake.server.base.clone();
            let client = |app: &str| {
                oauth_table(
                    app,
                    (fakes::google::CLIENT_ID, fakes::google::CLIENT_SECRET),
                    &base,
                    ["o/oauth2/v2/auth", "token", "revoke"],
                )
            };
            let described = Described {
                name: "Google (Calendar and Gmail)",
                credentials: format!(
                    "OAuth client id {}, secret {}; the account is {}",
                    fakes::google::CLIENT_ID,
                    fakes::google::CLIENT_SECRET,
                    fakes::google::EMAIL
                ),
                oauth: vec![client("google-calendar"), client("gmail")],
                endpoints: vec![
                    format!("google_calendar_api = \"{base}calendar/v3/\""),
                    format!("gmail_api = \"{base}gmail/v1/\""),
                ],
                base,
            };
            (Box::new(fake), described)
        }
        Kind::Zendesk => {
            let (subdomain, email, token) = ZENDESK;
            let fake =
                fakes::zendesk::FakeZendesk::start(subdomain, email, token, records, records)
                    .await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Zendesk",
                credentials: format!(
                    "subdomain {subdomain}, agent email {email}, API token {token}"
                ),
                oauth: Vec::new(),
                endpoints: vec![format!("zendesk_api_template = \"{base}{{subdomain}}/\"")],
                base,
            };
            (Box::new(fake), described)
        }
        Kind::Twilio => {
            let (sid, token) = TWILIO;
            let fake = fakes::twilio::FakeTwilio::start(sid, token, records, records).await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Twilio",
                credentials: format!("account SID {sid}, auth token {token}, region us1"),
                oauth: Vec::new(),
                endpoints: vec![format!("twilio_regions.us1 = \"{base}\"")],
                base,
            };
            (Box::new(fake), described)
        }
        Kind::Todoist => {
            let token = TODOIST_TOKEN;
            let fake = fakes::todoist::FakeTodoist::start(token, records).await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Todoist",
                credentials: format!("API token {token}"),
                oauth: Vec::new(),
                endpoints: vec![format!("todoist_api = \"{base}api/v1/\"")],
                base,
            };
            (Box::new(fake), described)
        }
        Kind::Caldav => {
            let (user, password) = CALDAV;
            let fake = fakes::caldav::FakeCalDav::start(user, password, records).await?;
            let described = Described {
                name: "CalDAV",
                credentials: format!(
                    "server URL {}, username {user}, app password {password}",
                    fake.calendar_url()
                ),
                oauth: Vec::new(),
                endpoints: Vec::new(),
                base: fake.server.base.clone(),
            };
            (Box::new(fake), described)
        }
    })
}
