//! An integration's credentials: read from the vault by the reference its state names, and
//! refreshed single-flight across processes.
//!
//! A refresh takes the integration's `refresh:` lease first, then looks again: if the access
//! token in the current state differs from the one the provider refused, another worker
//! refreshed already and its credentials are used. Only the lease holder spends the refresh
//! token, so a rotating one is never spent twice. The new secret goes to the vault under a new
//! reference, and `CredentialsRefreshed` records it. Waiters give up after the lease period.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use command::repository::{Repository, RepositoryError};
use domain::integration::{Integration, IntegrationCommand};
use domain::{Caller, CommandContext, IntegrationId, StreamName, Timestamp};
use secrecy::ExposeSecret;
use url::Url;

use crate::http::ProviderError;
use crate::oauth::OAuthClient;
use crate::provider::Credentials;
use crate::sync::CredentialSource;
use crate::vault::Vault;
use database::lease::Leases;

/// Refresh this long before the access token expires.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
const REFRESH_LEASE: Duration = Duration::from_secs(30);

/// The credential service of one process.
#[derive(Debug)]
pub struct CredentialService {
    repo: Arc<Repository>,
    vault: Arc<Vault>,
    leases: Leases,
    oauth: BTreeMap<String, OAuthClient>,
    http: reqwest::Client,
    redirect: Url,
    /// Refreshes in this process, one at a time per integration (the lease is this
    /// process's, so it does not keep two of its own tasks apart).
    local: std::sync::Mutex<HashMap<IntegrationId, Arc<tokio::sync::Mutex<()>>>>,
}

fn storage(error: impl std::error::Error + Send + Sync + 'static) -> ProviderError {
    ProviderError::storage("reading or storing credentials", error)
}

impl CredentialService {
    pub fn new(
        repo: Arc<Repository>,
        vault: Arc<Vault>,
        leases: Leases,
        oauth: BTreeMap<String, OAuthClient>,
        http: reqwest::Client,
        redirect: Url,
    ) -> Self {
        Self {
            repo,
            vault,
            leases,
            oauth,
            http,
            redirect,
            local: std::sync::Mutex::default(),
        }
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    async fn load(&self, id: IntegrationId) -> Result<Integration, ProviderError> {
        self.repo
            .load::<Integration>(&StreamName::integration(id))
            .await
            .map(|loaded| loaded.state)
            .map_err(storage)
    }

    async fn read(&self, state: &Integration) -> Result<Credentials, ProviderError> {
        let reference = state.credential_ref.as_ref().ok_or_else(|| {
            ProviderError::Misconfigured("the integration holds no credentials".into())
        })?;
        let secret = self.vault.get(reference).await.map_err(storage)?;
        Credentials::from_secret(&secret)
    }

    fn client_for(&self, state: &Integration) -> Option<&OAuthClient> {
        let app = &state.profile.as_ref()?.app;
        self.oauth.get(app)
    }

    /// Spends the refresh token, holding the lease; `stale` is what the caller last saw.
    async fn refresh_holding_lease(
        &self,
        id: IntegrationId,
        stale: &Credentials,
    ) -> Result<Credentials, ProviderError> {
        let state = self.load(id).await?;
        let current = self.read(&state).await?;
        if token_of(&current) != token_of(stale) {
            // Someone refreshed while we waited for the lease.
            return Ok(current);
        }
        let client = self
            .client_for(&state)
            .ok_or_else(|| ProviderError::Unauthorized {
                detail: "the provider refused the credentials and they cannot be refreshed".into(),
            })?;
        let grant = client.refresh(&self.http, &self.redirect, &current).await?;
        let reference = self
            .vault
            .put(id, &grant.credentials.to_secret())
            .await
            .map_err(storage)?;
        let command = IntegrationCommand::RecordCredentialsRefresh {
            credential_ref: reference,
            expires_at: grant.credentials.expires_at,
        };
        let context = CommandContext::new(Caller::system("token refresh"), Timestamp::now());
        match self
            .repo
            .execute::<Integration>(&StreamName::integration(id), &command, &context)
            .await
        {
            Ok(_) => Ok(grant.credentials),
            Err(RepositoryError::Domain(error)) => Err(ProviderError::Misconfigured(format!(
                "the refreshed credentials were not recorded: {error}"
            ))),
            Err(error) => Err(storage(error)),
        }
    }
}

fn token_of(credentials: &Credentials) -> Option<&str> {
    credentials
        .access_token
        .as_ref()
        .map(|token| token.expose_secret())
}

#[async_trait]
impl CredentialSource for CredentialService {
    async fn current(
        &self,
        id: IntegrationId,
        state: &Integration,
    ) -> Result<Credentials, ProviderError> {
        let credentials = self.read(state).await?;
        let expiring = credentials.expires_at.is_some_and(|at| {
            let ahead = time::Duration::try_from(REFRESH_AHEAD).unwrap_or(time::Duration::ZERO);
            at <= Timestamp::now().plus(ahead)
        });
        if expiring && credentials.refresh_token.is_some() && self.client_for(state).is_some() {
            return self.refresh(id, &credentials).await;
        }
        Ok(credentials)
    }

    async fn refresh(
        &self,
        id: IntegrationId,
        stale: &Credentials,
    ) -> Result<Credentials, ProviderError> {
        let local = self
            .local
            .lock()
            .expect("local refresh locks")
            .entry(id)
            .or_default()
            .clone();
        let _one_here = local.lock().await;
        let lease = format!("refresh:{id}");
        let deadline = Instant::now() + REFRESH_LEASE;
        loop {
            if self
                .leases
                .try_acquire(&lease, REFRESH_LEASE)
                .await
                .map_err(storage)?
            {
                let outcome = self.refresh_holding_lease(id, stale).await;
                if let Err(error) = self.leases.release(&lease).await {
                    tracing::warn!(integration = %id, %error, "could not release a refresh lease");
                }
                return outcome;
            }
            // Another process is refreshing: its result shows up as a new reference.
            let state = self.load(id).await?;
            let current = self.read(&state).await?;
            if token_of(&current) != token_of(stale) {
                return Ok(current);
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Unavailable {
                    detail: "another process's token refresh did not finish".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
