//! For auditors: an integration's whole history with who did what and when, its state as of
//! any moment, the check of its hash chain, and the workspace's lifecycle events as NDJSON.
//! Read-only, so every role may read them; another user's personal integration stays
//! invisible here too.

use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::{Integration, StreamName, Timestamp};
use serde::{Deserialize, Serialize};

use super::query::{self, invalid_query, Query};
use super::{Caller, Target};
use crate::problem::repository_problem;
use crate::problem::Problem;
use crate::service::load_visible;
use crate::views::{EventView, StateView};
use crate::AppState;

const PAGE: usize = 1000;

fn store_problem(error: eventstore::StoreError) -> Problem {
    Problem::failed("cannot read the event log", &error)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    /// The version to continue after (the `next_cursor` of the previous page).
    cursor: Option<u64>,
    limit: Option<usize>,
}

/// The integration's history, oldest first, in pages.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/history",
    tag = "audit",
    params(
        crate::api::IntegrationPath,
        HistoryQuery
    ),
    responses(
        (status = 200, description = "Events oldest first, each with actor, time and chain hash", body = HistoryPage),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn history(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, Problem> {
    load_visible(&state, &caller, id).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, PAGE);
    let after = query::position("cursor", query.cursor.unwrap_or(0))?;
    let from = after + 1;
    let page = state
        .store
        .read_stream(&StreamName::integration(id), from, limit)
        .await
        .map_err(store_problem)?;
    let next_cursor = (page.len() == limit).then(|| page.last().map(|e| e.version));
    Ok(Json(HistoryPage {
        integration_id: id.to_string(),
        events: page.iter().map(EventView::from).collect(),
        next_cursor: next_cursor.flatten(),
    }))
}

/// A page of an integration's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct HistoryPage {
    integration_id: String,
    events: Vec<EventView>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StateQuery {
    /// RFC 3339; every event that occurred at or before it counts. Absent: now.
    as_of: Option<String>,
}

/// The integration's state as of a moment, folded from its history alone (never a snapshot):
/// `installed` is the row Installed showed then (`null` when it had none: not yet connected,
/// or deleted), `state` the whole state.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/state",
    tag = "audit",
    params(
        crate::api::IntegrationPath,
        StateQuery
    ),
    responses(
        (status = 200, description = "`installed` (the row Installed showed then) and the whole `state`", body = StateView),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn state_as_of(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Query(query): Query<StateQuery>,
) -> Result<Json<StateView>, Problem> {
    load_visible(&state, &caller, id).await?;
    let as_of = match &query.as_of {
        Some(text) => Timestamp::parse(text).map_err(|error| {
            invalid_query(format!(
                "as_of must be an RFC 3339 time such as 2026-11-28T10:00:00Z: {error}"
            ))
        })?,
        None => Timestamp::now(),
    };
    let loaded = state
        .services
        .repository
        .load_as_of::<Integration>(&StreamName::integration(id), as_of)
        .await
        .map_err(repository_problem)?;
    Ok(Json(StateView::new(id, as_of, loaded)))
}

/// Checks the integration's hash chain from its first event — versions without a gap, every
/// stored hash equal to the one its content gives — the service's newest signed checkpoint
/// of it (the stream must still hold, at the signed version, the signed hash), and the detail
/// of every run whose outcome commits to it (intact, or aged out past the retention).
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/verify",
    tag = "audit",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "`intact`, the first `broken` link if any, and the signed `checkpoint`'s check", body = Verification),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn verify(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<Json<Verification>, Problem> {
    load_visible(&state, &caller, id).await?;
    let stream = StreamName::integration(id);
    let verified = state
        .checkpoints
        .verify(state.store.as_ref(), &stream)
        .await
        .map_err(store_problem)?;
    let run_detail = command::run_detail::check_runs(
        state.store.as_ref(),
        state.detail.as_ref(),
        &stream,
        state.run_detail_retention,
    )
    .await
    .map_err(store_problem)?;
    Ok(Json(Verification {
        integration_id: id.to_string(),
        intact: verified.is_intact() && run_detail.holds(),
        events: verified.chain.events,
        head: verified.chain.head.to_hex(),
        broken: verified.chain.broken,
        checkpoint: verified.checkpoint,
        run_detail,
    }))
}

/// The check of an integration's hash chain and of its newest signed checkpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Verification {
    integration_id: String,
    /// The chain holds, and so does the newest checkpoint (if the stream was signed yet).
    intact: bool,
    /// Events checked.
    events: u64,
    /// The last good link (hex): the stream's head when nothing is broken.
    head: String,
    /// The first link that does not hold.
    broken: Option<eventstore::BrokenLink>,
    checkpoint: command::checkpoints::CheckpointCheck,
    /// The runs whose outcome commits to their detail, checked against the run-detail log.
    run_detail: command::run_detail::RunDetailReport,
}

/// `GET /v1/workspaces/{ws}/audit/export`: the lifecycle events of every integration the
/// caller can see in the workspace, one JSON object per line, streamed from the log in order.
/// Synced records and secrets are never in it: records live outside the log, and events carry
/// only references to secrets.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/audit/export",
    tag = "audit",
    params(
        crate::api::WorkspacePath
    ),
    responses(
        (status = 200, description = "One event per line", body = crate::views::EventView, content_type = "application/x-ndjson"),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
) -> Result<Response, Problem> {
    let principal = caller.in_workspace(&ws)?.clone();
    let head = state.store.head_position().await.map_err(store_problem)?;
    let store = state.store.clone();
    let lines = futures::stream::try_unfold(1u64, move |from| {
        let store = store.clone();
        let principal = principal.clone();
        async move {
            if from > head {
                return Ok::<_, std::io::Error>(None);
            }
            // The workspace's own events only: the cost follows them, not the log.
            let page = store
                .read_workspace(&principal.workspace, from, PAGE)
                .await
                .map_err(std::io::Error::other)?;
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(None);
            };
            let mut chunk = Vec::new();
            for event in page.iter().filter(|e| e.position <= head) {
                let visible = event.stream.integration_id().is_some()
                    && event
                        .metadata
                        .owner
                        .as_ref()
                        .is_none_or(|owner| *owner == principal.user);
                if visible {
                    serde_json::to_writer(&mut chunk, &EventView::from(event))
                        .map_err(std::io::Error::other)?;
                    chunk.push(b'\n');
                }
            }
            Ok(Some((axum::body::Bytes::from(chunk), last + 1)))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit.ndjson\"",
            ),
        ],
        HttpBody::from_stream(lines),
    )
        .into_response())
}
