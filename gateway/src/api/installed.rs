//! Marketplace > Installed: the workspace's integrations and the caller's personal ones, a
//! page answered again as it was while the read model has not moved.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Caller;
use crate::problem::Problem;
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct InstalledQuery {
    status: Option<String>,
    app: Option<String>,
    scope: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// Marketplace > Installed: the workspace's integrations and the caller's personal ones.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations",
    tag = "integrations",
    params(
        crate::api::WorkspacePath,
        InstalledQuery
    ),
    responses(
        (status = 200, description = "Marketplace > Installed: `integrations` and `next_cursor`", body = Installed),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn installed(
    State(state): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
    Query(query): Query<InstalledQuery>,
) -> Result<Response, Problem> {
    let principal = caller.in_workspace(&ws)?;
    let read_failed = |error: database::ReadDbError| match error {
        database::ReadDbError::BadCursor(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            "the cursor is not one this list gave out",
        ),
        other => Problem::failed("cannot read Installed", &other),
    };
    let limit = query.limit.unwrap_or(50);
    // The same page, unchanged since the read model last moved, is answered as it was.
    let key = format!(
        "{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0{limit}",
        principal.workspace, principal.user, query.status, query.app, query.scope, query.cursor
    );
    let stamp = projections::runner::Projection::Installed
        .stamp(&state.read)
        .await
        .map_err(read_failed)?;
    let body = match state.installed_pages.get(&key, stamp) {
        Some(body) => body,
        None => {
            let filter = projections::installed::Filter {
                status: query.status,
                app: query.app,
                scope: query.scope,
            };
            let page = projections::installed::page(
                &state.read,
                principal.workspace.as_str(),
                principal.user.as_str(),
                &filter,
                query.cursor.as_deref(),
                limit,
            )
            .await
            .map_err(read_failed)?;
            let body = axum::body::Bytes::from(
                serde_json::to_vec(&Installed {
                    integrations: page.rows,
                    next_cursor: page.next_cursor,
                })
                .map_err(|_| Problem::internal())?,
            );
            state.installed_pages.put(key, stamp, body.clone());
            body
        }
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// A page of Marketplace > Installed, ordered by app then integration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Installed {
    integrations: Vec<projections::installed::InstalledRow>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}
