//! `harmony fake-provider`: a provider's fake on loopback, speaking its real wire format, to
//! try the service without a provider account (and for `harmony bench sync`, which runs one in
//! a process of its own).

use std::io::Write;

use anyhow::Context;

/// `harmony fake-provider hubspot`.
pub async fn fake_hubspot(args: &crate::cli::FakeHubSpotArgs) -> anyhow::Result<()> {
    let fake =
        adapters::fakes::hubspot::FakeHubSpot::start_on(args.contacts, args.companies, args.listen)
            .await
            .with_context(|| format!("while listening on {}", args.listen))?;
    if let Some(token) = &args.accept_token {
        fake.auth.accept(token);
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", fake.server.base)?;
        stdout.flush()?;
    }
    eprintln!(
        "fake HubSpot: {} contacts, {} companies; OAuth client id {}, secret {}",
        args.contacts,
        args.companies,
        adapters::fakes::hubspot::CLIENT_ID,
        adapters::fakes::hubspot::CLIENT_SECRET
    );
    crate::shutdown_signal().await;
    Ok(())
}

/// What a fake accepts and how the service is pointed at it, for standard error.
struct Described {
    base: url::Url,
    name: &'static str,
    /// The credentials it accepts, in words.
    credentials: String,
    /// The `harmony.toml` lines that point the service at it.
    config: String,
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

/// `harmony fake-provider <salesforce|google|zendesk|twilio|todoist|caldav>`.
pub async fn fake(command: &crate::cli::FakeProviderCommand) -> anyhow::Result<()> {
    use crate::cli::FakeProviderCommand as C;
    use adapters::fakes;
    // Each fake is kept alive (its server stops when dropped) until the signal.
    let (_fake, described): (Box<dyn std::any::Any>, Described) = match command {
        C::Hubspot(_) => anyhow::bail!("HubSpot's fake has its own options"),
        C::Salesforce(args) => {
            let fake = fakes::salesforce::FakeSalesforce::start(args.records, args.records).await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Salesforce",
                credentials: format!(
                    "OAuth client id {}, secret {}",
                    fakes::salesforce::CLIENT_ID,
                    fakes::salesforce::CLIENT_SECRET
                ),
                config: oauth_table(
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
                ),
                base,
            };
            (Box::new(fake), described)
        }
        C::Google(args) => {
            let fake = fakes::google::FakeGoogle::start(args.records, args.records).await?;
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
                config: format!(
                    "{}\n{}\n[endpoints]\ngoogle_calendar_api = \"{base}calendar/v3/\"\n\
                     gmail_api = \"{base}gmail/v1/\"",
                    client("google-calendar"),
                    client("gmail")
                ),
                base,
            };
            (Box::new(fake), described)
        }
        C::Zendesk(args) => {
            let (subdomain, email, token) = ("acme", "agent@acme.example", "fake-zendesk-token");
            let fake = fakes::zendesk::FakeZendesk::start(
                subdomain,
                email,
                token,
                args.records,
                args.records,
            )
            .await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Zendesk",
                credentials: format!(
                    "subdomain {subdomain}, agent email {email}, API token {token}"
                ),
                config: format!("[endpoints]\nzendesk_api_template = \"{base}{{subdomain}}/\""),
                base,
            };
            (Box::new(fake), described)
        }
        C::Twilio(args) => {
            let (sid, token) = ("AC00000000000000000000000000000001", "fake-twilio-token");
            let fake =
                fakes::twilio::FakeTwilio::start(sid, token, args.records, args.records).await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Twilio",
                credentials: format!("account SID {sid}, auth token {token}, region us1"),
                config: format!("[endpoints.twilio_regions]\nus1 = \"{base}\""),
                base,
            };
            (Box::new(fake), described)
        }
        C::Todoist(args) => {
            let token = "fake-todoist-token";
            let fake = fakes::todoist::FakeTodoist::start(token, args.records).await?;
            let base = fake.server.base.clone();
            let described = Described {
                name: "Todoist",
                credentials: format!("API token {token}"),
                config: format!("[endpoints]\ntodoist_api = \"{base}api/v1/\""),
                base,
            };
            (Box::new(fake), described)
        }
        C::Caldav(args) => {
            let (user, password) = ("jane", "fake-caldav-password");
            let fake = fakes::caldav::FakeCalDav::start(user, password, args.records).await?;
            let described = Described {
                name: "CalDAV",
                credentials: format!(
                    "server URL {}, username {user}, app password {password}",
                    fake.calendar_url()
                ),
                config: "(none: the server URL is a field of the connection)".to_owned(),
                base: fake.server.base.clone(),
            };
            (Box::new(fake), described)
        }
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", described.base)?;
        stdout.flush()?;
    }
    eprintln!(
        "fake {}: {}\nin harmony.toml:\n{}\nserving until stopped",
        described.name, described.credentials, described.config
    );
    crate::shutdown_signal().await;
    Ok(())
}
