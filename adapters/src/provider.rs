//! What every provider client does, whatever its API: test a connection, list an object's
//! fields, pull one page of records from a cursor, push a Companion action.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use domain::catalog::App;
use domain::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::ProviderError;

/// The secrets of one connection, as the vault holds them (one JSON document per reference).
/// `Debug` shows which secrets exist, never their values.
#[derive(Clone, Default)]
pub struct Credentials {
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<Timestamp>,
    /// Secret setup fields typed at connect time (API keys, passwords), by field name.
    pub secrets: BTreeMap<String, SecretString>,
    /// Facts of the token response that are not secret but come with it (Salesforce's
    /// `instance_url` and identity URL).
    pub facts: BTreeMap<String, String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &self.access_token.as_ref().map(|_| "…"))
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "…"))
            .field("expires_at", &self.expires_at)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("facts", &self.facts)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    facts: BTreeMap<String, String>,
}

impl Credentials {
    /// API-key credentials: the secret setup fields.
    pub fn from_secrets(secrets: BTreeMap<String, SecretString>) -> Self {
        Self {
            secrets,
            ..Self::default()
        }
    }

    /// The form the vault stores.
    pub fn to_secret(&self) -> SecretString {
        let expose = |secret: &SecretString| secret.expose_secret().to_owned();
        let stored = StoredCredentials {
            access_token: self.access_token.as_ref().map(expose),
            refresh_token: self.refresh_token.as_ref().map(expose),
            expires_at: self.expires_at,
            secrets: self
                .secrets
                .iter()
                .map(|(name, value)| (name.clone(), expose(value)))
                .collect(),
            facts: self.facts.clone(),
        };
        SecretString::from(
            serde_json::to_string(&stored).expect("strings and maps always serialize"),
        )
    }

    pub fn from_secret(secret: &SecretString) -> Result<Self, ProviderError> {
        let stored: StoredCredentials =
            serde_json::from_str(secret.expose_secret()).map_err(|_| {
                ProviderError::Misconfigured("the stored credentials are unreadable".into())
            })?;
        Ok(Self {
            access_token: stored.access_token.map(SecretString::from),
            refresh_token: stored.refresh_token.map(SecretString::from),
            expires_at: stored.expires_at,
            secrets: stored
                .secrets
                .into_iter()
                .map(|(name, value)| (name, SecretString::from(value)))
                .collect(),
            facts: stored.facts,
        })
    }

    /// The bearer token, or a clear error when the connection has none.
    pub fn bearer(&self) -> Result<&str, ProviderError> {
        self.access_token
            .as_ref()
            .map(|token| token.expose_secret())
            .ok_or_else(|| {
                ProviderError::Misconfigured("the connection holds no access token".into())
            })
    }

    /// A secret setup field, or a clear error naming it.
    pub fn secret(&self, name: &str) -> Result<&str, ProviderError> {
        self.secrets
            .get(name)
            .map(|value| value.expose_secret())
            .ok_or_else(|| ProviderError::Misconfigured(format!("the connection holds no {name}")))
    }
}

/// One connection as a provider call sees it.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The non-secret setup fields (instance URL, subdomain, region …).
    pub setup: &'a BTreeMap<String, String>,
    pub credentials: &'a Credentials,
}

impl Connection<'_> {
    pub fn setup_field(&self, name: &str) -> Result<&str, ProviderError> {
        self.setup
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ProviderError::Misconfigured(format!("the connection has no {name}")))
    }
}

/// What a connection test learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// How the provider names the connected account, for Installed.
    pub account_label: Option<String>,
    /// The provider's answer in words.
    pub answer: String,
}

/// How a pull starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullMode {
    /// Everything, from the beginning.
    Full,
    /// What changed since the watermark the last run left (`None`: none yet, so everything).
    Incremental { since: Option<String> },
}

/// One page request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest<'a> {
    pub object: &'a str,
    /// The provider fields to fetch where the API asks for a list (mapped custom fields
    /// included); providers that always return every field ignore it.
    pub fields: &'a [String],
    pub mode: &'a PullMode,
    /// The provider's cursor of the page to fetch; `None` for the first page.
    pub page: Option<&'a str>,
}

/// One record as the provider returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct PulledRecord {
    pub id: String,
    /// The provider's fields, by the provider's names.
    pub fields: Map<String, Value>,
    /// The provider reported it deleted (a tombstone in an incremental feed).
    pub deleted: bool,
}

impl PulledRecord {
    /// The provider sent the record itself: a live one, or a deleted one with its fields
    /// (HubSpot's `archived`, Salesforce's `IsDeleted`). A bare tombstone — a removal in a
    /// feed, a 404 for a member gone before it was read — is no record received, and a run
    /// counts it as a deletion only.
    pub fn received(&self) -> bool {
        !(self.deleted && self.fields.is_empty())
    }
}

/// One page of records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    pub records: Vec<PulledRecord>,
    /// The cursor of the next page; `None` when this object is done.
    pub next_page: Option<String>,
    /// On the last page: the watermark the next incremental run starts from.
    pub watermark: Option<String>,
}

/// A provider client. Implementations hold their base URLs and an HTTP client; the credentials
/// come with each call, so one client serves every integration of its app.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The app this provider serves, from the catalog.
    fn app(&self) -> &'static App;

    /// Checks the credentials with a cheap call that needs them, and names the account.
    async fn test(&self, connection: Connection<'_>) -> Result<Identity, ProviderError>;

    /// The fields the provider has for `object`, custom ones included.
    async fn fields(
        &self,
        connection: Connection<'_>,
        object: &str,
    ) -> Result<Vec<String>, ProviderError>;

    /// Whether anything of `object` changed since `since` (the watermark the last run left),
    /// asked the cheapest way the provider has; an incremental run asks this before pulling.
    /// `None` where the provider has no cheaper way than the pull itself: for most, the first
    /// page of an incremental pull is one request that answers "nothing" (Google's
    /// `syncToken`, Gmail's `historyId`, Zendesk's cursor, Todoist's sync token), and it also
    /// moves the watermark on.
    async fn anything_new(
        &self,
        connection: Connection<'_>,
        object: &str,
        since: &str,
    ) -> Result<Option<bool>, ProviderError> {
        let _ = (connection, object, since);
        Ok(None)
    }

    /// One page of `object`'s records.
    async fn pull(
        &self,
        connection: Connection<'_>,
        request: PullRequest<'_>,
    ) -> Result<Page, ProviderError>;

    /// Whether `tool` may be performed again with the same idempotency key without acting
    /// twice (the provider deduplicates, or the push names what it creates). A tool that is
    /// not is never retried once an attempt may have reached the provider.
    fn repeatable(&self, tool: &str) -> bool {
        let _ = tool;
        true
    }

    /// Performs a Companion tool at the provider. `idempotency_key` is sent where the provider
    /// supports one, so a retried push never creates a duplicate.
    async fn push(
        &self,
        connection: Connection<'_>,
        tool: &str,
        arguments: &Value,
        idempotency_key: &str,
    ) -> Result<Value, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_never_debug_print_a_secret() {
        let credentials = Credentials {
            access_token: Some(SecretString::from("at-s3cr3t")),
            refresh_token: Some(SecretString::from("rt-s3cr3t")),
            expires_at: Timestamp::from_unix_micros(1_800_000_000_000_000),
            secrets: BTreeMap::from([("api_token".to_owned(), SecretString::from("key-s3cr3t"))]),
            facts: BTreeMap::from([("instance_url".to_owned(), "https://x.example".to_owned())]),
        };
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("api_token"));
        let back = Credentials::from_secret(&credentials.to_secret()).expect("decodes");
        assert_eq!(back.bearer().expect("token"), "at-s3cr3t");
        assert_eq!(back.secret("api_token").expect("key"), "key-s3cr3t");
        assert_eq!(back.expires_at, credentials.expires_at);
        assert_eq!(back.facts, credentials.facts);
        assert!(matches!(
            back.secret("nope"),
            Err(ProviderError::Misconfigured(_))
        ));
    }
}
