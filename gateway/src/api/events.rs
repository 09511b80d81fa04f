//! `GET /v1/workspaces/{ws}/events`: the workspace's events as server-sent events, for
//! downstream services. Each event's SSE id is its position in the log, so a client that
//! reconnects with `Last-Event-ID` (or `?after=`) continues exactly after the last event it
//! saw: the log's subscription replays from there and then goes live, with no gap and no
//! duplicate at the seam. A caller sees the workspace's events and its own personal ones,
//! never another user's personal integration. A stream ends within a few seconds of its
//! token's revocation, and a token holds a few streams at most (429 beyond).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::query::{self, Query};
use super::Caller;
use crate::caller::integration_id;
use crate::problem::Problem;
use crate::views::EventView;
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Comma-separated event types, e.g. `SyncCompleted,CredentialsExpired`.
    types: Option<String>,
    /// Only this integration's events.
    integration: Option<String>,
    /// Continue after this position (as `Last-Event-ID` does); `0` replays from the start.
    /// Without either, the stream starts with the next event.
    after: Option<u64>,
}

/// How often an open stream checks that its token is still live.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/events",
    tag = "events",
    params(
        crate::api::WorkspacePath,
        EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")
    ),
    responses(
        (status = 200, description = "Server-sent events: `id` is the log position, `event` the type, `data` the event", body = crate::views::EventView, content_type = "text/event-stream"),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let principal = caller.in_workspace(&ws)?.clone();
    let slot = state.streams.open(&caller.1).ok_or_else(|| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "this token holds {} event streams open already: close one first",
                state.streams.max()
            ),
        )
        .retry_after(5)
    })?;
    let last_seen = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    query::invalid_query(
                        "Last-Event-ID must be the id of an event this stream sent",
                    )
                })?,
        ),
        None => query.after,
    };
    let after = match last_seen {
        Some(position) => query::position("the position to continue after", position)?,
        None => state
            .store
            .head_position()
            .await
            .map_err(|error| Problem::failed("cannot read the head of the log", &error))?,
    };
    let types: Option<BTreeSet<String>> = query.types.as_deref().map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let only = query
        .integration
        .as_deref()
        .map(integration_id)
        .transpose()?
        .map(domain::StreamName::integration);
    let mut closing = state.closing.subscribe();
    let closed = async move {
        // Ends the stream when the service shuts down (or its sender is gone).
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let (read, token_hash) = (state.db.clone(), caller.1.clone());
    let revoked = async move {
        // A revoked token's stream ends within a check's interval (its database may be
        // another process's: the check reads it, not this process's memory).
        let mut every = tokio::time::interval(REVOCATION_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match crate::tokens::authenticate_hash(&read, &token_hash).await {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(error) => tracing::warn!(%error, "cannot check an event stream's token"),
            }
        }
    };
    let ended = async move {
        futures::pin_mut!(closed, revoked);
        futures::future::select(closed, revoked).await;
    };
    // A replay reads the workspace's own events, then follows the live log.
    let events =
        eventstore::subscribe_workspace(state.store.clone(), principal.workspace.clone(), after)
            .await
            .map_err(|error| Problem::failed("cannot read the event log", &error))?;
    let stream = events.take_until(ended).filter_map(move |item| {
        // The stream holds its place among the token's streams until it is dropped.
        let _held = &slot;
        let answer = match item {
            Ok(event) => {
                let visible = event
                    .metadata
                    .owner
                    .as_ref()
                    .is_none_or(|owner| *owner == principal.user)
                    && only.as_ref().is_none_or(|stream| *stream == event.stream)
                    && types
                        .as_ref()
                        .is_none_or(|types| types.contains(&event.event_type));
                visible.then(|| {
                    Ok::<_, Infallible>(
                        SseEvent::default()
                            .id(event.position.to_string())
                            .event(event.event_type.clone())
                            .json_data(EventView::from(&event))
                            .unwrap_or_else(|_| SseEvent::default().comment("unencodable")),
                    )
                })
            }
            Err(error) => {
                // The client reconnects with its Last-Event-ID and loses nothing.
                tracing::warn!(%error, "the event stream's subscription failed");
                Some(Ok(SseEvent::default().event("error").data(
                    "the stream was interrupted: reconnect with Last-Event-ID",
                )))
            }
        };
        std::future::ready(answer)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
