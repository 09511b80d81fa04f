//! What a caller may do to an integration, whichever way they come: the API's handlers and
//! the console's forms both call these, so each operation — its rules, its protocol, its
//! refusals — is written once. Handlers only read the request and shape the answer.

use std::collections::BTreeMap;

use adapters::connections::Connected;
use adapters::provider::Identity;
use axum::http::StatusCode;
use domain::catalog::AuthKind;
use domain::{Integration, IntegrationCommand, IntegrationId, StreamName, SyncId};
use secrecy::SecretString;

use crate::caller::Caller;
use crate::cookies::Browser;
use crate::problem::{connect_problem, not_found, repository_problem, Problem};
use crate::AppState;

/// The integration's state now, if the caller may see it; otherwise not found (another
/// user's personal integration does not leak).
pub(crate) async fn load_visible(
    state: &AppState,
    caller: &Caller,
    id: IntegrationId,
) -> Result<Integration, Problem> {
    crate::consistency::log_follows_read_models(state, id).await;
    let current = state
        .services
        .repository
        .load::<Integration>(&StreamName::integration(id))
        .await
        .map_err(repository_problem)?
        .state;
    if current.visible_to(&caller.context().caller) {
        Ok(current)
    } else {
        Err(not_found(id))
    }
}

/// Runs a command on an integration as the caller: the domain decides.
pub(crate) async fn command(
    state: &AppState,
    caller: &Caller,
    id: IntegrationId,
    command: IntegrationCommand,
) -> Result<(), Problem> {
    state
        .services
        .repository
        .decide::<Integration>(&StreamName::integration(id), &command, &caller.context())
        .await
        .map(|_| ())
        .map_err(repository_problem)
}

/// A connect or a reauth: done at once (an API-key app, its key checked with the provider),
/// or waiting for the provider's authorization page (an OAuth2 app).
#[derive(Debug)]
pub(crate) enum Connecting {
    Connected(Connected),
    Authorize(url::Url),
}

/// The secret fields of an API-key app, held as secrets from here on.
fn secrets(fields: BTreeMap<String, String>) -> BTreeMap<String, SecretString> {
    fields
        .into_iter()
        .map(|(name, value)| (name, SecretString::from(value)))
        .collect()
}

/// Connects `app` in the caller's workspace with its setup `fields`; an OAuth2 flow is bound
/// to `browser` and the caller's token.
pub(crate) async fn connect(
    state: &AppState,
    caller: &Caller,
    browser: &Browser,
    app: &str,
    fields: BTreeMap<String, String>,
) -> Result<Connecting, Problem> {
    let app = domain::catalog::app(app).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("there is no app {app}"),
        )
    })?;
    let fields = without_empty_optional_fields(app, fields);
    let connections = &state.services.connections;
    match app.auth {
        AuthKind::ApiKey => connections
            .connect_with_key(&caller.context(), app.id, &secrets(fields))
            .await
            .map(Connecting::Connected),
        AuthKind::Oauth2 { .. } => connections
            .start_oauth(
                &caller.context(),
                app.id,
                None,
                fields,
                caller.binding(browser),
            )
            .await
            .map(Connecting::Authorize),
    }
    .map_err(connect_problem)
}

/// The setup fields without the optional ones left empty: an empty optional field (a form's
/// blank input) is an absent one. A required field stays, empty or not, for the rules to judge.
fn without_empty_optional_fields(
    app: &domain::catalog::App,
    mut fields: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    fields.retain(|name, value| {
        let optional = app.setup_field(name).is_some_and(|field| !field.required);
        !(optional && value.trim().is_empty())
    });
    fields
}

/// Reauthenticates, keeping the integration: a new authorization page for an OAuth2 app, the
/// new key in `fields` for an API-key app.
pub(crate) async fn reauth(
    state: &AppState,
    caller: &Caller,
    browser: &Browser,
    id: IntegrationId,
    fields: BTreeMap<String, String>,
) -> Result<Connecting, Problem> {
    let current = load_visible(state, caller, id).await?;
    let app = current
        .profile
        .as_ref()
        .and_then(|profile| domain::catalog::app(&profile.app))
        .ok_or_else(|| not_found(id))?;
    let connections = &state.services.connections;
    match app.auth {
        AuthKind::Oauth2 { .. } => connections
            .start_oauth(
                &caller.context(),
                app.id,
                Some(id),
                current.setup.clone(),
                caller.binding(browser),
            )
            .await
            .map(Connecting::Authorize),
        AuthKind::ApiKey => connections
            .reauth_with_key(&caller.context(), id, &secrets(fields))
            .await
            .map(|identity| {
                Connecting::Connected(Connected {
                    integration: id,
                    identity,
                })
            }),
    }
    .map_err(connect_problem)
}

/// Tests the connection with the provider now.
pub(crate) async fn test(
    state: &AppState,
    caller: &Caller,
    id: IntegrationId,
) -> Result<Identity, Problem> {
    state
        .services
        .connections
        .test(&caller.context(), id, state.services.credentials.as_ref())
        .await
        .map_err(connect_problem)
}

/// A full sync requested: its id, and whether it joined one already queued.
#[derive(Debug)]
pub(crate) struct SyncRequest {
    pub(crate) sync_id: SyncId,
    pub(crate) coalesced: bool,
}

/// Requests a sync now; a request while one is pending joins it, unless a worker has
/// claimed that run, when it is queued to follow it.
pub(crate) async fn request_sync(
    state: &AppState,
    caller: &Caller,
    id: IntegrationId,
    kind: domain::integration::SyncKind,
) -> Result<SyncRequest, Problem> {
    let sync_id = SyncId::new();
    // Asked before the state is loaded: see `run_claimed`.
    let claimed = adapters::sync::run_claimed(&state.services.leases, id)
        .await
        .map_err(|error| Problem::failed("the sync leases cannot be read", &error))?;
    let decided = state
        .services
        .repository
        .decide::<Integration>(
            &StreamName::integration(id),
            &IntegrationCommand::RequestSync {
                sync_id,
                kind,
                claimed,
            },
            &caller.context(),
        )
        .await
        .map_err(repository_problem)?;
    let joined = decided
        .state
        .queued_sync
        .as_ref()
        .or(decided.state.pending_sync.as_ref());
    Ok(match (&decided.append, joined) {
        // Joined the follow-up queued behind a claimed run, or else the pending run.
        (None, Some(pending)) => SyncRequest {
            sync_id: pending.sync_id,
            coalesced: true,
        },
        _ => SyncRequest {
            sync_id,
            coalesced: false,
        },
    })
}

/// Disconnects: whether the provider revoked the token.
pub(crate) async fn disconnect(
    state: &AppState,
    caller: &Caller,
    id: IntegrationId,
) -> Result<bool, Problem> {
    state
        .services
        .connections
        .disconnect(&caller.context(), id, "disconnected by a user")
        .await
        .map_err(connect_problem)
}

/// Deletes: secrets shredded, records purged, history kept.
pub(crate) async fn delete(
    state: &AppState,
    caller: &Caller,
    id: IntegrationId,
) -> Result<(), Problem> {
    state
        .services
        .connections
        .delete(&caller.context(), id)
        .await
        .map(drop)
        .map_err(connect_problem)
}
