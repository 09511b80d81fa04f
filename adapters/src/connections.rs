//! Connecting, testing, reauthenticating and disconnecting integrations: what the gateway calls
//! for the Marketplace's buttons.
//!
//! An API-key connect checks every rule of the connect first (who may, which fields), then
//! makes a real call to the provider with the key; a key the provider refuses is refused with
//! the provider's reason, and nothing is stored. Only then does the secret go to the vault
//! and the connect to the log. An OAuth2 connect starts with an authorization URL for the
//! popup; its callback exchanges the code, checks the grant with the provider the same way,
//! and connects — or, for a reauth, gives the existing integration its new credentials,
//! keeping its id, mappings and history. A disconnect revokes the token where the provider
//! allows it, records whether it did, and stops the integration's syncs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use command::repository::{Repository, RepositoryError};
use database::ServiceDb;
use domain::aggregate::{Aggregate, CommandContext};
use domain::catalog::{self, App, AuthKind};
use domain::integration::{
    ConnectIntegration, Integration, IntegrationCommand, IntegrationEvent, Status,
};
use domain::principal::{Caller, Principal};
use domain::{DomainError, IntegrationId, StreamName, Timestamp};
use secrecy::SecretString;
use url::Url;

use crate::http::{interactive, ProviderError};
use crate::oauth::{CallbackError, Claimed, OAuthClient, Pending};
use crate::provider::{Connection, Credentials, Identity};
use crate::providers::Providers;
use crate::vault::{Vault, VaultError};

/// Why a connection step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("there is no app {0}")]
    UnknownApp(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{field} {reason}")]
    InvalidSetup { field: String, reason: String },
    /// The provider refused the credentials or the call: its reason, in its words.
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Callback(#[from] CallbackError),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Repository(RepositoryError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<RepositoryError> for ConnectError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Domain(domain) => ConnectError::Domain(domain),
            other => ConnectError::Repository(other),
        }
    }
}

/// What an OAuth2 flow is bound to when it starts: the SHA-256 of the starting browser's
/// cookie and of the API token (see [`crate::oauth::binding_hash`]).
#[derive(Clone, Debug)]
pub struct Binding {
    pub browser: String,
    pub token: String,
}

/// What a connect or reauth produced.
#[derive(Debug)]
pub struct Connected {
    pub integration: IntegrationId,
    pub identity: Identity,
}

/// The connection flows of one service.
#[derive(Clone, Debug)]
pub struct Connections {
    repo: Arc<Repository>,
    db: ServiceDb,
    vault: Arc<Vault>,
    providers: Providers,
    oauth: BTreeMap<String, OAuthClient>,
    unavailable: BTreeMap<String, String>,
    http: reqwest::Client,
    redirect: Url,
}

fn app_of(id: &str) -> Result<&'static App, ConnectError> {
    catalog::app(id).ok_or_else(|| ConnectError::UnknownApp(id.to_owned()))
}

impl Connections {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        repo: Arc<Repository>,
        db: ServiceDb,
        vault: Arc<Vault>,
        providers: Providers,
        oauth: BTreeMap<String, OAuthClient>,
        unavailable: BTreeMap<String, String>,
        http: reqwest::Client,
        redirect: Url,
    ) -> Self {
        Self {
            repo,
            db,
            vault,
            providers,
            oauth,
            unavailable,
            http,
            redirect,
        }
    }

    /// Why `app` cannot be connected here, if it cannot.
    pub fn unavailable(&self, app: &str) -> Option<&str> {
        self.unavailable.get(app).map(String::as_str)
    }

    async fn check(
        &self,
        app: &App,
        setup: &BTreeMap<String, String>,
        credentials: &Credentials,
    ) -> Result<(Identity, u64), ConnectError> {
        let provider = self
            .providers
            .get(app.id)
            .ok_or_else(|| ConnectError::Unavailable(format!("no client for {}", app.name)))?;
        let started = Instant::now();
        let identity = interactive(provider.test(Connection { setup, credentials })).await?;
        Ok((identity, started.elapsed().as_millis() as u64))
    }

    /// Connects an API-key app with its setup fields, secret ones included.
    pub async fn connect_with_key(
        &self,
        context: &CommandContext,
        app: &str,
        fields: &BTreeMap<String, SecretString>,
    ) -> Result<Connected, ConnectError> {
        let app = app_of(app)?;
        if !matches!(app.auth, AuthKind::ApiKey) {
            return Err(ConnectError::InvalidSetup {
                field: "app".into(),
                reason: format!(
                    "{} connects through its authorization page, not a key",
                    app.name
                ),
            });
        }
        let (setup, secrets) = split_fields(app, fields)?;
        let integration = IntegrationId::new();
        let mut connect = ConnectIntegration {
            integration,
            app: app.id.to_owned(),
            scope: app.scope,
            setup: setup.clone(),
            granted_scopes: Vec::new(),
            account_label: None,
            credential_ref: domain::CredentialRef("vault:pending".into()),
            token_expires_at: None,
        };
        // Every rule of the connect before any call to the provider.
        Integration::default().handle(&IntegrationCommand::Connect(connect.clone()), context)?;
        let credentials = Credentials::from_secrets(secrets);
        let (identity, latency_ms) = self.check(app, &setup, &credentials).await?;
        connect.account_label = identity.account_label.clone();
        connect.credential_ref = self
            .vault
            .put(integration, &credentials.to_secret())
            .await?;
        self.finish_connect(context, connect, &identity, latency_ms, None)
            .await?;
        Ok(Connected {
            integration,
            identity,
        })
    }

    /// Appends the connect whose secret is in the vault already. A connect the domain refuses
    /// (the app's slot taken meanwhile by a connect that won the race) keeps nothing: its
    /// secret is shredded and, for an OAuth2 grant (`grant`), the grant revoked at the
    /// provider.
    async fn finish_connect(
        &self,
        context: &CommandContext,
        connect: ConnectIntegration,
        identity: &Identity,
        latency_ms: u64,
        grant: Option<(&OAuthClient, &Credentials)>,
    ) -> Result<(), ConnectError> {
        let integration = connect.integration;
        if let Err(error) = command::lifecycle::connect(
            &self.repo,
            context,
            connect,
            command::lifecycle::DEFAULT_ABANDON_AFTER,
        )
        .await
        {
            // Nothing may outlive a refused connect: its secret goes with it. (The id is new:
            // nothing else refers to it, whatever the failure was.)
            if let Err(error) = self.vault.shred(integration).await {
                tracing::warn!(%integration, %error, "the secret of a refused connect could not be shredded");
            }
            if let Some((client, credentials)) = grant {
                self.revoke_unkept(client, credentials).await;
            }
            return Err(error.into());
        }
        self.record_test(integration, true, latency_ms, &identity.answer)
            .await
    }

    /// Revokes every grant a `Reauthenticated` after `version` of `stream` stored, but the one
    /// already revoked.
    async fn revoke_grants_since(
        &self,
        client: &OAuthClient,
        stream: &StreamName,
        version: u64,
        revoked: Option<&domain::CredentialRef>,
    ) {
        let later = match self
            .repo
            .store()
            .read_stream(stream, version + 1, 1000)
            .await
        {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%stream, %error, "cannot look for grants a disconnect raced with");
                return;
            }
        };
        for event in later {
            let Ok(Some(IntegrationEvent::Reauthenticated(reauth))) =
                event.decode::<IntegrationEvent>()
            else {
                continue;
            };
            if Some(&reauth.credential_ref) == revoked {
                continue;
            }
            let credentials = match self.vault.get(&reauth.credential_ref).await {
                Ok(secret) => Credentials::from_secret(&secret),
                Err(error) => {
                    tracing::warn!(%stream, %error, "a grant a disconnect raced with is gone already");
                    continue;
                }
            };
            match credentials {
                Ok(credentials) => self.revoke_unkept(client, &credentials).await,
                Err(error) => tracing::warn!(%stream, %error, "a stored grant does not read"),
            }
        }
    }

    /// Revokes at the provider, where it allows, a grant the service does not keep (its
    /// command was refused): nobody else holds it, so nothing may leave it live.
    async fn revoke_unkept(&self, client: &OAuthClient, credentials: &Credentials) {
        match interactive(client.revoke(&self.http, credentials)).await {
            Ok(true) => tracing::info!("revoked a grant the service did not keep"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "the provider did not confirm the revocation of a grant the service did not keep")
            }
        }
    }

    async fn record_test(
        &self,
        integration: IntegrationId,
        ok: bool,
        latency_ms: u64,
        answer: &str,
    ) -> Result<(), ConnectError> {
        let system = CommandContext::new(Caller::system("connection test"), Timestamp::now());
        self.repo
            .execute::<Integration>(
                &StreamName::integration(integration),
                &IntegrationCommand::RecordConnectionTest {
                    ok,
                    latency_ms,
                    answer: answer.to_owned(),
                },
                &system,
            )
            .await?;
        Ok(())
    }

    /// Starts an OAuth2 connect (or, with `integration`, a reauth): the URL for the popup,
    /// bound to the starting browser and API token (`binding`).
    pub async fn start_oauth(
        &self,
        context: &CommandContext,
        app: &str,
        integration: Option<IntegrationId>,
        setup: BTreeMap<String, String>,
        binding: Binding,
    ) -> Result<Url, ConnectError> {
        let app = app_of(app)?;
        let AuthKind::Oauth2 { scopes, .. } = app.auth else {
            return Err(ConnectError::InvalidSetup {
                field: "app".into(),
                reason: format!(
                    "{} connects with a key, not an authorization page",
                    app.name
                ),
            });
        };
        let client = self.oauth.get(app.id).ok_or_else(|| {
            ConnectError::Unavailable(
                self.unavailable(app.id)
                    .unwrap_or("this app is not available here")
                    .to_owned(),
            )
        })?;
        let Caller::User(principal) = &context.caller else {
            return Err(DomainError::Forbidden("an integration is connected by a user").into());
        };
        // The rules first: a connect (or a reauth) this caller could not make starts nothing.
        match integration {
            None => {
                let probe = ConnectIntegration {
                    integration: IntegrationId::new(),
                    app: app.id.to_owned(),
                    scope: app.scope,
                    setup: setup.clone(),
                    granted_scopes: Vec::new(),
                    account_label: None,
                    credential_ref: domain::CredentialRef("vault:pending".into()),
                    token_expires_at: None,
                };
                Integration::default().handle(&IntegrationCommand::Connect(probe), context)?;
            }
            Some(id) => {
                let state = self
                    .repo
                    .load::<Integration>(&StreamName::integration(id))
                    .await?
                    .state;
                state.handle(
                    &IntegrationCommand::Reauthenticate {
                        credential_ref: domain::CredentialRef("vault:pending".into()),
                        granted_scopes: Vec::new(),
                        expires_at: None,
                    },
                    context,
                )?;
            }
        }
        let pending = Pending {
            workspace: principal.workspace.clone(),
            user: principal.user.clone(),
            role: principal.role,
            app: app.id.to_owned(),
            integration,
            setup,
            browser: binding.browser,
            token: binding.token,
        };
        let started = client
            .start(&self.db, &self.redirect, scopes, &pending)
            .await?;
        Ok(started.url)
    }

    /// Takes the pending authorization a callback's `state` names (consuming it, whatever
    /// follows), for the caller to check whose it is before [`finish_oauth`](Self::finish_oauth).
    pub async fn claim_callback(&self, state: &str) -> Result<Claimed, ConnectError> {
        Ok(crate::oauth::claim(&self.db, state).await?)
    }

    /// Finishes a claimed OAuth2 flow as `caller` — who started it, as their API token says
    /// now: checks the callback's issuer (`iss`, RFC 9207, when the provider sent one),
    /// exchanges the code, checks the grant with the provider and connects (or
    /// reauthenticates), every rule checked again with the caller's role now.
    pub async fn finish_oauth(
        &self,
        claimed: Claimed,
        code: &str,
        iss: Option<&str>,
        caller: Principal,
    ) -> Result<Connected, ConnectError> {
        let pending = &claimed.pending;
        if caller.workspace != pending.workspace || caller.user != pending.user {
            return Err(CallbackError::Foreign.into());
        }
        let app = app_of(&pending.app)?;
        let client = self.oauth.get(app.id).ok_or_else(|| {
            ConnectError::Unavailable(format!("no OAuth client for {}", app.name))
        })?;
        client.check_issuer(iss)?;
        let context = CommandContext::new(Caller::User(caller), Timestamp::now());
        // The code's exchange and the grant's check are one wait for the user.
        let (grant, (identity, latency_ms)) = interactive(async {
            let grant = client
                .exchange(&self.http, &self.redirect, &claimed, code)
                .await?;
            let checked = self
                .check(app, &claimed.pending.setup, &grant.credentials)
                .await?;
            Ok::<_, ConnectError>((grant, checked))
        })
        .await?;
        let pending = claimed.pending;
        match pending.integration {
            None => {
                let integration = IntegrationId::new();
                let credential_ref = self
                    .vault
                    .put(integration, &grant.credentials.to_secret())
                    .await?;
                let connect = ConnectIntegration {
                    integration,
                    app: app.id.to_owned(),
                    scope: app.scope,
                    setup: pending.setup.clone(),
                    granted_scopes: grant.scopes.clone(),
                    account_label: identity.account_label.clone(),
                    credential_ref,
                    token_expires_at: grant.credentials.expires_at,
                };
                self.finish_connect(
                    &context,
                    connect,
                    &identity,
                    latency_ms,
                    Some((client, &grant.credentials)),
                )
                .await?;
                Ok(Connected {
                    integration,
                    identity,
                })
            }
            Some(integration) => {
                self.reauthenticate(
                    &context,
                    integration,
                    &grant.credentials,
                    grant.scopes,
                    Some(client),
                )
                .await?;
                self.record_test(integration, true, latency_ms, &identity.answer)
                    .await?;
                Ok(Connected {
                    integration,
                    identity,
                })
            }
        }
    }

    /// Gives an API-key integration a new key, checked with the provider first.
    pub async fn reauth_with_key(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
        secrets: &BTreeMap<String, SecretString>,
    ) -> Result<Identity, ConnectError> {
        let state = self
            .repo
            .load::<Integration>(&StreamName::integration(integration))
            .await?
            .state;
        let profile = state.profile.as_ref().ok_or(DomainError::NotFound)?;
        let app = app_of(&profile.app)?;
        for name in secrets.keys() {
            let known = app.setup_field(name).is_some_and(|field| field.is_secret());
            if !known {
                return Err(ConnectError::InvalidSetup {
                    field: name.clone(),
                    reason: format!("is not a secret field of {}", app.name),
                });
            }
        }
        let credentials = Credentials::from_secrets(secrets.clone());
        // The rules before the provider: an auditor's attempt calls nobody.
        state.handle(
            &IntegrationCommand::Reauthenticate {
                credential_ref: domain::CredentialRef("vault:pending".into()),
                granted_scopes: Vec::new(),
                expires_at: None,
            },
            context,
        )?;
        let (identity, latency_ms) = self.check(app, &state.setup, &credentials).await?;
        self.reauthenticate(context, integration, &credentials, Vec::new(), None)
            .await?;
        self.record_test(integration, true, latency_ms, &identity.answer)
            .await?;
        Ok(identity)
    }

    /// Gives `integration` new credentials: stored in the vault, then the reauth decided and
    /// appended. The secret is kept only if the domain accepts the command: one it refuses
    /// (the integration was disconnected or deleted while the user was at the provider) is
    /// discarded, and an OAuth2 grant (`client`) revoked at the provider. A shredded
    /// integration's vault takes nothing at all.
    async fn reauthenticate(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
        credentials: &Credentials,
        granted_scopes: Vec<String>,
        client: Option<&OAuthClient>,
    ) -> Result<(), ConnectError> {
        let stream = StreamName::integration(integration);
        let command = |credential_ref| IntegrationCommand::Reauthenticate {
            credential_ref,
            granted_scopes: granted_scopes.clone(),
            expires_at: credentials.expires_at,
        };
        let credential_ref = match self.vault.put(integration, &credentials.to_secret()).await {
            Ok(reference) => reference,
            Err(VaultError::Shredded(_)) => {
                if let Some(client) = client {
                    self.revoke_unkept(client, credentials).await;
                }
                // The domain says why, in its words (disconnected, deleted).
                let state = self.repo.load::<Integration>(&stream).await?.state;
                state.handle(
                    &command(domain::CredentialRef("vault:pending".into())),
                    context,
                )?;
                return Err(VaultError::Shredded(integration.to_string()).into());
            }
            Err(error) => return Err(error.into()),
        };
        match self
            .repo
            .execute::<Integration>(&stream, &command(credential_ref.clone()), context)
            .await
        {
            Ok(_) => Ok(()),
            Err(RepositoryError::Domain(refused)) => {
                // An integration that has ended is shredded whole (and marked so, for data an
                // older release left unmarked); a live one loses only this secret.
                let ended = self
                    .repo
                    .load::<Integration>(&stream)
                    .await
                    .map(|loaded| {
                        matches!(
                            loaded.state.status,
                            Status::Disconnected | Status::Deleted | Status::Abandoned
                        )
                    })
                    .unwrap_or(true);
                let kept = if ended {
                    self.vault.shred(integration).await.map(drop)
                } else {
                    self.vault.discard(&credential_ref).await
                };
                if let Err(error) = kept {
                    tracing::warn!(%integration, %error, "the secret of a refused reauth could not be removed");
                }
                if let Some(client) = client {
                    self.revoke_unkept(client, credentials).await;
                }
                Err(refused.into())
            }
            // Whether the event was stored is unknown: the secret it may name stays.
            Err(other) => Err(other.into()),
        }
    }

    /// Tests the connection with the provider now and records the outcome.
    pub async fn test(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
        credentials: &dyn crate::sync::CredentialSource,
    ) -> Result<Identity, ConnectError> {
        let stream = StreamName::integration(integration);
        let state = self.repo.load::<Integration>(&stream).await?.state;
        // Whoever may not test it (or see it) learns nothing from the provider.
        state.handle(
            &IntegrationCommand::RecordConnectionTest {
                ok: true,
                latency_ms: 0,
                answer: String::new(),
            },
            context,
        )?;
        let profile = state.profile.as_ref().ok_or(DomainError::NotFound)?;
        let app = app_of(&profile.app)?;
        let tried = interactive(async {
            let current = credentials.current(integration, &state).await?;
            self.check(app, &state.setup, &current).await
        })
        .await;
        match tried {
            Ok((identity, latency_ms)) => {
                self.record_test(integration, true, latency_ms, &identity.answer)
                    .await?;
                Ok(identity)
            }
            Err(ConnectError::Provider(error)) => {
                self.record_test(integration, false, 0, &error.to_string())
                    .await?;
                Err(ConnectError::Provider(error))
            }
            Err(other) => Err(other),
        }
    }

    /// The fields the provider has now for `object` of the integration (custom ones
    /// included): what a mapping may map from.
    pub async fn provider_fields(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
        object: &str,
        credentials: &dyn crate::sync::CredentialSource,
    ) -> Result<Vec<String>, ConnectError> {
        let state = self
            .repo
            .load::<Integration>(&StreamName::integration(integration))
            .await?
            .state;
        if !state.visible_to(&context.caller) {
            return Err(DomainError::NotFound.into());
        }
        let profile = state.profile.as_ref().ok_or(DomainError::NotFound)?;
        let app = app_of(&profile.app)?;
        if app.mappable_object(object).is_none() {
            return Err(DomainError::UnknownObject {
                app: app.name.to_owned(),
                object: object.to_owned(),
            }
            .into());
        }
        self.discover(app, integration, &state, object, credentials)
            .await
    }

    async fn discover(
        &self,
        app: &App,
        integration: IntegrationId,
        state: &Integration,
        object: &str,
        credentials: &dyn crate::sync::CredentialSource,
    ) -> Result<Vec<String>, ConnectError> {
        let provider = self
            .providers
            .get(app.id)
            .ok_or_else(|| ConnectError::Unavailable(format!("no client for {}", app.name)))?;
        interactive(async {
            let current = credentials.current(integration, state).await?;
            Ok(provider
                .fields(
                    Connection {
                        setup: &state.setup,
                        credentials: &current,
                    },
                    object,
                )
                .await?)
        })
        .await
    }

    /// Replaces an object's field mapping, checked against the fields the provider has now
    /// (custom ones included). Every rule that needs no provider is checked first, so a caller
    /// who may not change the mapping learns nothing from the provider. With
    /// `expected_version`, a change made against mappings somebody changed since is refused.
    /// Answers the mapping version after the change.
    pub async fn change_mapping(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
        object: &str,
        fields: Vec<domain::integration::FieldMapping>,
        expected_version: Option<u32>,
        credentials: &dyn crate::sync::CredentialSource,
    ) -> Result<u32, ConnectError> {
        let stream = StreamName::integration(integration);
        let state = self.repo.load::<Integration>(&stream).await?.state;
        let named: Vec<String> = fields.iter().map(|f| f.provider_field.clone()).collect();
        state.handle(
            &IntegrationCommand::ChangeMapping {
                object: object.to_owned(),
                fields: fields.clone(),
                discovered_fields: Some(named),
                expected_version,
            },
            context,
        )?;
        let profile = state.profile.as_ref().ok_or(DomainError::NotFound)?;
        let app = app_of(&profile.app)?;
        let discovered = self
            .discover(app, integration, &state, object, credentials)
            .await?;
        let outcome = self
            .repo
            .execute::<Integration>(
                &stream,
                &IntegrationCommand::ChangeMapping {
                    object: object.to_owned(),
                    fields,
                    discovered_fields: Some(discovered),
                    expected_version,
                },
                context,
            )
            .await?;
        Ok(outcome.state.mapping_version)
    }

    /// Disconnects: revokes the token at the provider where it allows (never deleting data
    /// there), records whether it did, frees the app's slot and shreds the secrets. The sync
    /// worker stops the integration's running sync when it sees the disconnect.
    pub async fn disconnect(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
        reason: &str,
    ) -> Result<bool, ConnectError> {
        let stream = StreamName::integration(integration);
        let loaded = self.repo.load::<Integration>(&stream).await?;
        let state = loaded.state;
        // The rules first: a disconnect this caller may not make revokes nothing.
        state.handle(
            &IntegrationCommand::Disconnect {
                reason: reason.to_owned(),
                token_revoked: false,
            },
            context,
        )?;
        let app = state
            .profile
            .as_ref()
            .map(|p| p.app.clone())
            .unwrap_or_default();
        let mut revoked = false;
        if let (Some(client), Some(reference)) = (self.oauth.get(&app), &state.credential_ref) {
            let stored = self.vault.get(reference).await;
            if let Ok(secret) = stored {
                let credentials = Credentials::from_secret(&secret)?;
                match interactive(client.revoke(&self.http, &credentials)).await {
                    Ok(confirmed) => revoked = confirmed,
                    Err(error) => {
                        tracing::warn!(%integration, %error, "the provider did not confirm the revocation")
                    }
                }
            }
        }
        command::lifecycle::end(
            &self.repo,
            context,
            integration,
            IntegrationCommand::Disconnect {
                reason: reason.to_owned(),
                token_revoked: revoked,
            },
        )
        .await?;
        // A reauth that landed between this disconnect's read and its append gave the
        // integration a grant the revocation above never saw: revoke it too, while its secret
        // is still there.
        if let Some(client) = self.oauth.get(&app) {
            self.revoke_grants_since(
                client,
                &stream,
                loaded.version,
                state.credential_ref.as_ref(),
            )
            .await;
        }
        // The connection's configuration goes with it: its secrets are shredded (after the
        // event, as a delete does; the follower of the log shreds them if this fails).
        if let Err(error) = self.vault.shred(integration).await {
            tracing::warn!(%integration, %error, "the secrets of a disconnected integration are shredded later");
        }
        Ok(revoked)
    }

    /// Deletes: gone from Installed, its records purged, its secrets shredded; its history
    /// stays. The `Deleted` event is appended first, so a failed append leaves the integration
    /// as it was, credentials and all. The secrets are shredded right after; should that fail,
    /// the service's follower of `Deleted` events shreds them (see
    /// [`eventstore::purge_deleted_integrations`]). Answers whether they are shredded already.
    pub async fn delete(
        &self,
        context: &CommandContext,
        integration: IntegrationId,
    ) -> Result<bool, ConnectError> {
        command::lifecycle::end(
            &self.repo,
            context,
            integration,
            IntegrationCommand::Delete {
                secrets_shredded: true,
            },
        )
        .await?;
        match self.vault.shred(integration).await {
            Ok(_) => Ok(true),
            Err(error) => {
                tracing::warn!(%integration, %error, "the secrets of a deleted integration are shredded later");
                Ok(false)
            }
        }
    }
}

/// Setup fields that go to the log, and secret ones that go to the vault.
type SplitFields = (BTreeMap<String, String>, BTreeMap<String, SecretString>);

/// Splits typed fields into the setup (non-secret, to the log) and the secrets (to the
/// vault), checking each against the app's fields.
fn split_fields(
    app: &App,
    fields: &BTreeMap<String, SecretString>,
) -> Result<SplitFields, ConnectError> {
    use secrecy::ExposeSecret;
    let mut setup = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (name, value) in fields {
        let field = app
            .setup_field(name)
            .ok_or_else(|| ConnectError::InvalidSetup {
                field: name.clone(),
                reason: format!("is not a field of {}", app.name),
            })?;
        field
            .kind
            .validate(value.expose_secret())
            .map_err(|reason| ConnectError::InvalidSetup {
                field: name.clone(),
                reason,
            })?;
        if field.is_secret() {
            secrets.insert(name.clone(), value.clone());
        } else {
            setup.insert(name.clone(), value.expose_secret().to_owned());
        }
    }
    if let Some(missing) = app
        .setup_fields
        .iter()
        .find(|field| field.required && !fields.contains_key(field.name))
    {
        return Err(ConnectError::InvalidSetup {
            field: missing.name.to_owned(),
            reason: "is required".into(),
        });
    }
    Ok((setup, secrets))
}
