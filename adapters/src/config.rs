//! The adapters' configuration: each OAuth2 app's client, the public base URL that redirect
//! URIs are made from, and where each provider's API lives. It comes from a TOML file and the
//! environment (the environment wins), never from code; an OAuth2 app without a client is
//! listed as unavailable, with the reason.
//!
//! ```toml
//! public_base_url = "https://harmony.example.com"
//!
//! [oauth.hubspot]
//! client_id = "…"
//! client_secret = "…"
//!
//! [endpoints]
//! hubspot_api = "https://api.hubapi.com/"
//! ```
//!
//! The environment: `HARMONY_PUBLIC_BASE_URL`, and `HARMONY_OAUTH_<APP>_CLIENT_ID` /
//! `HARMONY_OAUTH_<APP>_CLIENT_SECRET` with the app id upper-cased and `-` as `_`
//! (`HARMONY_OAUTH_GOOGLE_CALENDAR_CLIENT_ID`).

use std::collections::BTreeMap;
use std::path::Path;

use domain::catalog::{self, AuthKind};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::oauth::{OAuthClient, Revocation};
use crate::providers::Endpoints;

/// Why the configuration could not be read; the message names the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is invalid: {message}")]
    Invalid { path: String, message: String },
    #[error("{name} is invalid: {message}")]
    Variable { name: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    public_base_url: Option<Url>,
    #[serde(default)]
    oauth: BTreeMap<String, ClientFile>,
    #[serde(default)]
    endpoints: EndpointsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    client_id: Option<String>,
    client_secret: Option<String>,
    authorize_url: Option<Url>,
    token_url: Option<Url>,
    revoke_url: Option<Url>,
    /// The issuer identifier a callback's `iss` must name (RFC 9207).
    issuer: Option<String>,
    /// How the client authenticates at the token endpoint: `basic` (HTTP Basic, RFC 6749
    /// §2.3.1) or `body` (`client_id` and `client_secret` in the form).
    client_auth: Option<ClientAuth>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ClientAuth {
    Basic,
    Body,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    hubspot_api: Option<Url>,
    google_calendar_api: Option<Url>,
    gmail_api: Option<Url>,
    todoist_api: Option<Url>,
    zendesk_api_template: Option<String>,
    #[serde(default)]
    twilio_regions: BTreeMap<String, Url>,
}

/// The OAuth2 endpoints of an app at its provider.
struct Defaults {
    authorize: &'static str,
    token: &'static str,
    revoke: Option<(&'static str, bool)>,
    extra: &'static [(&'static str, &'static str)],
    /// The client's credentials go in the token request's body: only for a provider that
    /// accepts nothing else (HubSpot); HTTP Basic otherwise.
    credentials_in_body: bool,
}

fn defaults(app: &str) -> Option<Defaults> {
    const GOOGLE: Defaults = Defaults {
        authorize: "https://accounts.google.com/o/oauth2/v2/auth",
        token: "https://oauth2.googleapis.com/token",
        revoke: Some(("https://oauth2.googleapis.com/revoke", true)),
        // A refresh token only comes with offline access and a consent screen.
        extra: &[("access_type", "offline"), ("prompt", "consent")],
        credentials_in_body: false,
    };
    match app {
        "hubspot" => Some(Defaults {
            authorize: "https://app.hubspot.com/oauth/authorize",
            token: "https://api.hubapi.com/oauth/v1/token",
            revoke: Some(("https://api.hubapi.com/oauth/v1/refresh-tokens/", false)),
            extra: &[],
            credentials_in_body: true,
        }),
        "salesforce" => Some(Defaults {
            authorize: "https://login.salesforce.com/services/oauth2/authorize",
            token: "https://login.salesforce.com/services/oauth2/token",
            revoke: Some(("https://login.salesforce.com/services/oauth2/revoke", true)),
            extra: &[],
            credentials_in_body: false,
        }),
        "google-calendar" | "gmail" => Some(GOOGLE),
        _ => None,
    }
}

/// The adapters' configuration, read.
#[derive(Clone, Debug)]
pub struct AdaptersConfig {
    /// Where users reach the service; redirect URIs are made from it. `None`: the service's
    /// own listen address.
    pub public_base_url: Option<Url>,
    pub endpoints: Endpoints,
    /// The OAuth2 clients, by app id, for the apps that have one configured.
    pub oauth: BTreeMap<String, OAuthClient>,
    /// OAuth2 apps without a client, with the reason.
    pub unavailable: BTreeMap<String, String>,
}

fn env_name(app: &str, what: &str) -> String {
    format!(
        "HARMONY_OAUTH_{}_{what}",
        app.to_ascii_uppercase().replace('-', "_")
    )
}

/// No file and no variables: the providers' public endpoints, no OAuth client, so every
/// OAuth2 app unavailable with its reason.
impl Default for AdaptersConfig {
    fn default() -> Self {
        Self::load_with(None, |_| None)
            .expect("without a file or variables the configuration cannot be invalid")
    }
}

impl AdaptersConfig {
    /// Reads `file` (if given) and the variables `env` looks up (the process's environment,
    /// read by the caller at start, or a map in tests).
    pub fn load_with(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parsed: File = match file {
            None => File::default(),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|error| ConfigError::Invalid {
                    path: shown,
                    message: error.message().to_owned(),
                })?
            }
        };
        if let Some(unknown) = parsed.oauth.keys().find(|app| defaults(app).is_none()) {
            let known: Vec<&str> = catalog::apps()
                .iter()
                .filter(|app| matches!(app.auth, AuthKind::Oauth2 { .. }))
                .map(|app| app.id)
                .collect();
            return Err(ConfigError::Invalid {
                path: file.map(|p| p.display().to_string()).unwrap_or_default(),
                message: format!(
                    "[oauth.{unknown}]: no OAuth2 app has that id; the OAuth2 apps are {}",
                    known.join(", ")
                ),
            });
        }
        let public_base_url = match env("HARMONY_PUBLIC_BASE_URL") {
            Some(text) => Some(Url::parse(&text).map_err(|e| ConfigError::Variable {
                name: "HARMONY_PUBLIC_BASE_URL".into(),
                message: e.to_string(),
            })?),
            None => parsed.public_base_url,
        };
        let mut endpoints = Endpoints::default();
        let overrides = parsed.endpoints;
        if let Some(url) = overrides.hubspot_api {
            endpoints.hubspot_api = url;
        }
        if let Some(url) = overrides.google_calendar_api {
            endpoints.google_calendar_api = url;
        }
        if let Some(url) = overrides.gmail_api {
            endpoints.gmail_api = url;
        }
        if let Some(url) = overrides.todoist_api {
            endpoints.todoist_api = url;
        }
        if let Some(template) = overrides.zendesk_api_template {
            endpoints.zendesk_api_template = template;
        }
        endpoints.twilio_regions.extend(overrides.twilio_regions);

        let mut oauth = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        let mut files = parsed.oauth;
        for app in catalog::apps() {
            if !matches!(app.auth, AuthKind::Oauth2 { .. }) {
                continue;
            }
            let defaults = defaults(app.id).expect("every OAuth2 app has default endpoints");
            let file = files.remove(app.id);
            let id = env(&env_name(app.id, "CLIENT_ID"))
                .or_else(|| file.as_ref().and_then(|f| f.client_id.clone()));
            let secret = env(&env_name(app.id, "CLIENT_SECRET"))
                .or_else(|| file.as_ref().and_then(|f| f.client_secret.clone()));
            let (Some(client_id), Some(client_secret)) = (id, secret) else {
                unavailable.insert(
                    app.id.to_owned(),
                    format!(
                        "{}'s OAuth client is not configured: set {} and {} (or [oauth.{}] in the configuration file)",
                        app.name,
                        env_name(app.id, "CLIENT_ID"),
                        env_name(app.id, "CLIENT_SECRET"),
                        app.id
                    ),
                );
                continue;
            };
            let url = |given: Option<Url>, default: &str| {
                given.unwrap_or_else(|| Url::parse(default).expect("a valid default URL"))
            };
            let revocation = defaults.revoke.map(|(default, rfc7009)| {
                let url = file
                    .as_ref()
                    .and_then(|f| f.revoke_url.clone())
                    .unwrap_or_else(|| Url::parse(default).expect("a valid default URL"));
                if rfc7009 {
                    Revocation::Rfc7009(url)
                } else {
                    Revocation::DeleteRefreshToken(url)
                }
            });
            oauth.insert(
                app.id.to_owned(),
                OAuthClient {
                    client_id,
                    client_secret: SecretString::from(client_secret),
                    authorize_url: url(
                        file.as_ref().and_then(|f| f.authorize_url.clone()),
                        defaults.authorize,
                    ),
                    token_url: url(
                        file.as_ref().and_then(|f| f.token_url.clone()),
                        defaults.token,
                    ),
                    revocation,
                    credentials_in_body: match file.as_ref().and_then(|f| f.client_auth) {
                        Some(ClientAuth::Body) => true,
                        Some(ClientAuth::Basic) => false,
                        None => defaults.credentials_in_body,
                    },
                    issuer: file.as_ref().and_then(|f| f.issuer.clone()),
                    extra_authorize_params: defaults
                        .extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                },
            );
        }
        Ok(Self {
            public_base_url,
            endpoints,
            oauth,
            unavailable,
        })
    }

    /// The endpoints the operator configured (or the providers' public defaults): requests to
    /// their origins are trusted, and may reach private addresses. A Zendesk template whose
    /// host holds the subdomain names no fixed origin, so its hosts stay guarded.
    pub fn trusted_endpoints(&self) -> Vec<Url> {
        let endpoints = &self.endpoints;
        let mut urls = vec![
            endpoints.hubspot_api.clone(),
            endpoints.google_calendar_api.clone(),
            endpoints.gmail_api.clone(),
            endpoints.todoist_api.clone(),
        ];
        urls.extend(endpoints.twilio_regions.values().cloned());
        if let Ok(zendesk) = Url::parse(&endpoints.zendesk_api_template) {
            if !zendesk
                .host_str()
                .is_some_and(|host| host.contains("subdomain"))
            {
                urls.push(zendesk);
            }
        }
        for client in self.oauth.values() {
            urls.push(client.authorize_url.clone());
            urls.push(client.token_url.clone());
            match &client.revocation {
                Some(Revocation::Rfc7009(url) | Revocation::DeleteRefreshToken(url)) => {
                    urls.push(url.clone());
                }
                None => {}
            }
        }
        urls
    }

    /// The OAuth callback's URL under the public base URL (or `fallback` when none is set).
    pub fn redirect_uri(&self, fallback: &Url) -> Url {
        let base = self.public_base_url.as_ref().unwrap_or(fallback);
        crate::providers::endpoint(base, "v1/oauth/callback").unwrap_or_else(|_| base.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_come_from_the_file_and_the_environment_and_the_rest_are_unavailable() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("harmony.toml");
        std::fs::write(
            &path,
            r#"
public_base_url = "https://harmony.example.com/"
[oauth.hubspot]
client_id = "from-file"
client_secret = "file-secret"
token_url = "http://127.0.0.1:9/oauth/v1/token"
[endpoints]
hubspot_api = "http://127.0.0.1:9/"
"#,
        )
        .expect("writes");
        let env = |name: &str| match name {
            "HARMONY_OAUTH_GOOGLE_CALENDAR_CLIENT_ID" => Some("google-id".to_owned()),
            "HARMONY_OAUTH_GOOGLE_CALENDAR_CLIENT_SECRET" => Some("google-secret".to_owned()),
            "HARMONY_OAUTH_HUBSPOT_CLIENT_ID" => Some("from-env".to_owned()),
            _ => None,
        };
        let config = AdaptersConfig::load_with(Some(&path), env).expect("loads");
        let hubspot = &config.oauth["hubspot"];
        assert_eq!(hubspot.client_id, "from-env", "the environment wins");
        assert_eq!(
            hubspot.token_url.as_str(),
            "http://127.0.0.1:9/oauth/v1/token"
        );
        assert!(matches!(
            hubspot.revocation,
            Some(Revocation::DeleteRefreshToken(_))
        ));
        assert!(
            hubspot.credentials_in_body,
            "HubSpot takes client credentials only in the body"
        );
        let google = &config.oauth["google-calendar"];
        assert!(google
            .extra_authorize_params
            .contains(&("access_type".to_owned(), "offline".to_owned())));
        assert!(
            !google.credentials_in_body,
            "HTTP Basic unless the provider needs the body"
        );
        assert_eq!(google.expected_issuer(), "https://accounts.google.com");
        assert!(config.unavailable["salesforce"].contains("HARMONY_OAUTH_SALESFORCE_CLIENT_ID"));
        assert!(config.unavailable.contains_key("gmail"));
        assert!(
            !config.unavailable.contains_key("zendesk"),
            "API-key apps need no client"
        );
        assert_eq!(config.endpoints.hubspot_api.as_str(), "http://127.0.0.1:9/");
        let fallback = Url::parse("http://127.0.0.1:8080").expect("url");
        assert_eq!(
            config.redirect_uri(&fallback).as_str(),
            "https://harmony.example.com/v1/oauth/callback"
        );
        let secrets = format!("{:?}", config.oauth);
        assert!(!secrets.contains("file-secret") && !secrets.contains("google-secret"));

        std::fs::write(
            &path,
            r#"
[oauth.salesforce]
client_id = "sf"
client_secret = "sf-secret"
client_auth = "body"
issuer = "https://login.example.com"
"#,
        )
        .expect("writes");
        let config = AdaptersConfig::load_with(Some(&path), |_| None).expect("loads");
        let salesforce = &config.oauth["salesforce"];
        assert!(
            salesforce.credentials_in_body,
            "client_auth = \"body\" wins"
        );
        assert_eq!(salesforce.expected_issuer(), "https://login.example.com");
        assert!(salesforce
            .check_issuer(Some("https://login.example.com/"))
            .is_ok());
        assert!(salesforce.check_issuer(None).is_ok());
        let wrong = salesforce
            .check_issuer(Some("https://evil.example.com"))
            .unwrap_err();
        assert!(wrong.to_string().contains("evil.example.com"), "{wrong}");

        // The variable spelling of an app id is not its table's name: the error lists those.
        std::fs::write(&path, "[oauth.google_calendar]\nclient_id = \"x\"\n").expect("writes");
        let error = AdaptersConfig::load_with(Some(&path), |_| None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("[oauth.google_calendar]"), "{error}");
        assert!(
            error.contains("google-calendar") && error.contains("hubspot"),
            "{error}"
        );
        std::fs::write(&path, "[oauth.hubspot]\nclient_auth = \"header\"\n").expect("writes");
        let error = AdaptersConfig::load_with(Some(&path), |_| None).unwrap_err();
        assert!(error.to_string().contains("basic"), "{error}");
        std::fs::write(&path, "public_base = 1\n").expect("writes");
        let error = AdaptersConfig::load_with(Some(&path), |_| None).unwrap_err();
        assert!(error.to_string().contains("public_base"), "{error}");
    }
}
