//! What the provider tests share: a fast retry policy, a connection from a token or secrets,
//! and a loop that pulls an object to its last page.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use adapters::http::{ProviderError, ProviderHttp, RetryPolicy};
use adapters::provider::{
    Connection, Credentials, Page, Provider, PullMode, PullRequest, PulledRecord,
};
use secrecy::SecretString;

pub fn http() -> ProviderHttp {
    ProviderHttp::new(
        adapters::outbound::Outbound::loopback(),
        RetryPolicy {
            base: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        },
    )
}

pub fn bearer(token: &str) -> Credentials {
    Credentials {
        access_token: Some(SecretString::from(token.to_owned())),
        ..Credentials::default()
    }
}

pub fn secrets(pairs: &[(&str, &str)]) -> Credentials {
    Credentials::from_secrets(
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), SecretString::from((*value).to_owned())))
            .collect(),
    )
}

pub fn setup(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// Everything one pull returned: its records in order, the watermark, and how many pages.
#[derive(Debug)]
pub struct Pulled {
    pub records: Vec<PulledRecord>,
    pub watermark: Option<String>,
    pub pages: usize,
}

impl Pulled {
    pub fn live_ids(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|r| !r.deleted)
            .map(|r| r.id.clone())
            .collect()
    }

    pub fn deleted_ids(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|r| r.deleted)
            .map(|r| r.id.clone())
            .collect()
    }
}

pub async fn pull_all(
    provider: &dyn Provider,
    setup: &BTreeMap<String, String>,
    credentials: &Credentials,
    object: &str,
    mode: PullMode,
) -> Result<Pulled, ProviderError> {
    let connection = Connection { setup, credentials };
    let mut records = Vec::new();
    let mut page: Option<String> = None;
    let mut pages = 0;
    loop {
        let Page {
            records: got,
            next_page,
            watermark,
        } = provider
            .pull(
                connection,
                PullRequest {
                    object,
                    fields: &[],
                    mode: &mode,
                    page: page.as_deref(),
                },
            )
            .await?;
        pages += 1;
        records.extend(got);
        match next_page {
            Some(next) => page = Some(next),
            None => {
                return Ok(Pulled {
                    records,
                    watermark,
                    pages,
                })
            }
        }
        assert!(pages < 10_000, "the pull does not end");
    }
}

/// The OAuth client of the fake HubSpot, as the configuration would give it.
pub fn hubspot_client(fake: &fakes::hubspot::FakeHubSpot) -> adapters::oauth::OAuthClient {
    use adapters::oauth::{OAuthClient, Revocation};
    use fakes::hubspot::{CLIENT_ID, CLIENT_SECRET};
    let base = &fake.server.base;
    OAuthClient {
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::from(CLIENT_SECRET),
        authorize_url: base.join("oauth/authorize").expect("a URL"),
        token_url: base.join("oauth/v1/token").expect("a URL"),
        revocation: Some(Revocation::DeleteRefreshToken(
            base.join("oauth/v1/refresh-tokens/").expect("a URL"),
        )),
        credentials_in_body: true,
        issuer: None,
        extra_authorize_params: Vec::new(),
    }
}
