//! An integration's routes: connect, test, reauth, sync, schedule, disconnect, delete, its
//! page and its sync logs. Each reads the request and shapes the answer; the operation itself
//! is the [`service`](crate::service)'s, which the console calls too.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::query::Query;
use super::{Body, Caller, OptionalBody, Target};
use crate::problem::Problem;
use crate::service::{self, Connecting};
use crate::AppState;

/// Tests the connection with the provider now.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/test",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "The provider accepted the credentials", body = Tested),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn test(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<Json<Tested>, Problem> {
    let identity = service::test(&state, &caller, id).await?;
    Ok(Json(Tested {
        ok: true,
        account_label: identity.account_label,
        answer: identity.answer,
    }))
}

/// A connection test the provider passed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Tested {
    ok: bool,
    /// How the provider names the connected account.
    account_label: Option<String>,
    /// The provider's answer in words.
    answer: String,
}

/// An OAuth2 app's next step: the provider's consent page, to open in a popup.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Authorize {
    authorization_url: String,
}

/// An API-key app, connected (or reauthenticated) with the key the provider just accepted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Connected {
    integration_id: String,
    /// How the provider names the connected account.
    account_label: Option<String>,
    /// The provider's answer in words.
    answer: String,
}

/// A reauth's answer: OAuth2 apps answer the consent page to open, API-key apps their new
/// key's acceptance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum Reauthenticating {
    Authorize(Authorize),
    Connected(Connected),
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReauthBody {
    /// An API-key app's new secret fields.
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// Reauthenticates, keeping the integration: an OAuth2 app answers a new authorization URL
/// for the popup; an API-key app takes its new key, checked with the provider first.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/reauth",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    request_body = Option<ReauthBody>,
    responses(
        (status = 200, description = "OAuth2: a new `authorization_url`; API key: the new key, accepted", body = Reauthenticating),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn reauth(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    browser: crate::cookies::Browser,
    OptionalBody(body): OptionalBody<ReauthBody>,
) -> Result<Response, Problem> {
    let fields = body.unwrap_or_default().fields;
    let answer = match service::reauth(&state, &caller, &browser, id, fields).await? {
        Connecting::Authorize(url) => Reauthenticating::Authorize(Authorize {
            authorization_url: url.to_string(),
        }),
        Connecting::Connected(connected) => Reauthenticating::Connected(Connected {
            integration_id: id.to_string(),
            account_label: connected.identity.account_label,
            answer: connected.identity.answer,
        }),
    };
    Ok((
        [(axum::http::header::SET_COOKIE, browser.cookie())],
        Json(answer),
    )
        .into_response())
}

/// A sync, now: full unless the body asks for an incremental one. A request while a run is
/// pending joins it.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/sync",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    request_body = Option<SyncBody>,
    responses(
        (status = 202, description = "A sync requested: its `sync_id`", body = SyncRequested),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn sync(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    OptionalBody(body): OptionalBody<SyncBody>,
) -> Result<Response, Problem> {
    let kind = body
        .and_then(|body| body.kind)
        .unwrap_or(domain::integration::SyncKind::Full);
    let requested = service::request_sync(&state, &caller, id, kind).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncRequested {
            sync_id: requested.sync_id.to_string(),
            coalesced: requested.coalesced,
        }),
    )
        .into_response())
}

/// What kind of sync to run; the body may be left out (a full sync).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SyncBody {
    /// `full` (the default: everything, deletions found too) or `incremental` (what changed
    /// since the last run, where the app supports it).
    kind: Option<domain::integration::SyncKind>,
}

/// A sync requested.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SyncRequested {
    /// The run that will pick up the request: the one already pending when `coalesced`.
    sync_id: String,
    /// A run was already pending: this request joined it.
    coalesced: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleBody {
    /// Minutes between incremental syncs, 5 to 1440 (a day); `null` for off.
    #[schema(minimum = 5, maximum = 1440)]
    every_minutes: Option<u32>,
}

/// The incremental-sync frequency, or off.
#[utoipa::path(
    put,
    path = "/v1/workspaces/{ws}/integrations/{id}/schedule",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    request_body = ScheduleBody,
    responses(
        (status = 200, description = "The incremental-sync frequency set", body = Schedule),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn schedule(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Body(body): Body<ScheduleBody>,
) -> Result<Json<Schedule>, Problem> {
    service::command(
        &state,
        &caller,
        id,
        domain::IntegrationCommand::ChangeSyncSchedule {
            every_minutes: body.every_minutes,
        },
    )
    .await?;
    Ok(Json(Schedule {
        every_minutes: body.every_minutes,
    }))
}

/// The incremental-sync frequency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Schedule {
    /// Minutes between incremental syncs; `null` for off.
    every_minutes: Option<u32>,
}

/// Disconnects: the token revoked at the provider where it allows, syncs stopped, data at
/// the provider untouched.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/disconnect",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "Disconnected; `token_revoked` says whether the provider revoked the token", body = Disconnected),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn disconnect(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<Json<Disconnected>, Problem> {
    let revoked = service::disconnect(&state, &caller, id).await?;
    Ok(Json(Disconnected {
        disconnected: true,
        token_revoked: revoked,
    }))
}

/// A disconnect done.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Disconnected {
    disconnected: bool,
    /// The provider revoked the token (where it allows).
    token_revoked: bool,
}

/// Deletes: gone from Installed, its secrets shredded, its synced records purged; its history
/// stays for auditors.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{ws}/integrations/{id}",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 204, description = "Deleted: secrets shredded, records purged, history kept"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_integration(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<StatusCode, Problem> {
    service::delete(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SyncLogsQuery {
    status: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<i64>,
    limit: Option<u32>,
}

/// An integration's sync logs, newest first.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/sync-logs",
    tag = "integrations",
    params(
        crate::api::IntegrationPath,
        SyncLogsQuery
    ),
    responses(
        (status = 200, description = "Sync runs, newest first: `runs` and `next_cursor`", body = projections::sync_runs::RunsPage),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn sync_logs(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Query(query): Query<SyncLogsQuery>,
) -> Result<Json<projections::sync_runs::RunsPage>, Problem> {
    let principal = &caller.0;
    // The logs of an integration this caller may not see (another workspace's, another
    // member's personal one, one that never was) are not found, as its every other route
    // answers: an empty list would say it exists. Judged from the log, like its history, so
    // an integration connected a moment ago is found before Installed shows it.
    service::load_visible(&state, &caller, id).await?;
    let filter = projections::sync_runs::Filter {
        status: query.status,
        kind: query.kind,
        since: query.since,
        until: query.until,
    };
    let page = projections::sync_runs::list(
        &state.db,
        principal.workspace.as_str(),
        principal.user.as_str(),
        id,
        &filter,
        query.cursor,
        query.limit.unwrap_or(50),
    )
    .await
    .map_err(|error| Problem::failed("cannot read the sync logs", &error))?;
    Ok(Json(page))
}

/// One sync run: its sync-log row, and the pages it recorded while its detail is kept.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SyncRunDetail {
    run: projections::sync_runs::SyncRun,
    /// `kept`: the pages below are the run's detail; `none`: the run recorded no detail (it
    /// changed nothing, or ran before the run-detail log, whose pages are not kept apart), or
    /// it aged out after `--sync-detail-retention-days`.
    detail: &'static str,
    /// The pages the run recorded, in order.
    pages: Vec<RunPage>,
}

/// A batch of pages a run recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RunPage {
    object: String,
    page: u32,
    pulled: u64,
    created: u64,
    updated: u64,
    deleted: u64,
    at: String,
}

/// One sync run of the integration, with its pages while its detail is kept.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/sync-logs/{sync_id}",
    tag = "integrations",
    params(
        crate::api::SyncRunPath
    ),
    responses(
        (status = 200, description = "The run's sync-log row, and its `pages` while its detail is kept (`detail`: `kept` or `none`)", body = SyncRunDetail),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn sync_run(
    State(state): State<AppState>,
    caller: crate::caller::Caller,
    Path((ws, id, sync_id)): Path<(String, String, String)>,
) -> Result<Json<SyncRunDetail>, Problem> {
    let Target { caller, id } = Target::resolve(caller, &ws, &id)?;
    service::load_visible(&state, &caller, id).await?;
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no sync run {sync_id} of this integration"),
        )
    };
    let sync_id: domain::SyncId = sync_id.parse().map_err(|_| not_found())?;
    let principal = &caller.0;
    // The run must be this integration's, as the sync logs show it: the detail alone does not
    // say whose run it is.
    let run = projections::sync_runs::get(
        &state.db,
        principal.workspace.as_str(),
        principal.user.as_str(),
        id,
        sync_id,
    )
    .await
    .map_err(|error| Problem::failed("cannot read the sync logs", &error))?
    .ok_or_else(not_found)?;
    let events = state
        .detail
        .read(sync_id)
        .await
        .map_err(|error| Problem::failed("cannot read the run's detail", &error))?;
    let pages: Vec<RunPage> = events
        .iter()
        .filter_map(|event| match event.decode::<domain::IntegrationEvent>() {
            Ok(Some(domain::IntegrationEvent::SyncProgressed(page))) => Some(RunPage {
                object: page.object,
                page: page.page,
                pulled: page.counts.pulled,
                created: page.counts.created,
                updated: page.counts.updated,
                deleted: page.counts.deleted,
                at: event.metadata.occurred_at.to_string(),
            }),
            _ => None,
        })
        .collect();
    Ok(Json(SyncRunDetail {
        run,
        detail: if events.is_empty() { "none" } else { "kept" },
        pages,
    }))
}

/// One integration, with the actions available now. Another user's personal integration is
/// not found, not forbidden: its existence does not leak.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}",
    tag = "integrations",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "The integration as Installed shows it, with the actions available now", body = projections::installed::InstalledRow),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn integration(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<projections::installed::InstalledRow>, Problem> {
    let principal = caller.in_workspace(&ws)?;
    let row = projections::installed::get(
        &state.db,
        principal.workspace.as_str(),
        principal.user.as_str(),
        &id,
    )
    .await
    .map_err(|error| Problem::failed("cannot read Installed", &error))?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no integration {id} here"),
        )
    })?;
    Ok(Json(row))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectBody {
    app: String,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// Connects an app: an API-key app at once (its key checked with the provider first), an
/// OAuth2 app by answering the authorization URL to open in a popup.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations",
    tag = "integrations",
    params(
        crate::api::WorkspacePath
    ),
    request_body = ConnectBody,
    responses(
        (status = 201, description = "An API-key app, connected: `integration_id`, `account_label`", body = Connected),
        (status = 200, description = "An OAuth2 app: the `authorization_url` to open in a popup", body = Authorize),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn connect(
    State(state): State<AppState>,
    caller: Caller,
    browser: crate::cookies::Browser,
    Path(ws): Path<String>,
    Body(body): Body<ConnectBody>,
) -> Result<Response, Problem> {
    caller.in_workspace(&ws)?;
    Ok(
        match service::connect(&state, &caller, &browser, &body.app, body.fields).await? {
            Connecting::Connected(connected) => (
                StatusCode::CREATED,
                Json(Connected {
                    integration_id: connected.integration.to_string(),
                    account_label: connected.identity.account_label,
                    answer: connected.identity.answer,
                }),
            )
                .into_response(),
            Connecting::Authorize(url) => (
                [(axum::http::header::SET_COOKIE, browser.cookie())],
                Json(Authorize {
                    authorization_url: url.to_string(),
                }),
            )
                .into_response(),
        },
    )
}
