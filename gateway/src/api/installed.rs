//! Marketplace > Installed: the workspace's integrations and the caller's personal ones, a
//! page answered again as it was while the read model has not moved.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::query::{invalid_query, Query};
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
    let read_failed = |error: database::ServiceDbError| match error {
        database::ServiceDbError::BadCursor(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            "the cursor is not one this list gave out",
        ),
        other => Problem::failed("cannot read Installed", &other),
    };
    let limit = query
        .limit
        .unwrap_or(50)
        .clamp(1, projections::installed::MAX_PAGE);
    let filter = checked_filter(&query)?;
    let cursor = query.cursor.as_deref().map(checked_cursor).transpose()?;
    // The same page, unchanged since the read model last moved, is answered as it was. The
    // key is built from the checked, normalized values only: whatever a caller sends, a key
    // is a few dozen bytes, and one page has one key.
    let key = format!(
        "{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0{limit}",
        principal.workspace, principal.user, filter.status, filter.app, filter.scope, cursor
    );
    let stamp = projections::runner::Projection::Installed
        .stamp(&state.db)
        .await
        .map_err(read_failed)?;
    let body = match state.installed_pages.get(&key, stamp) {
        Some(body) => body,
        None => {
            let page = projections::installed::page(
                &state.db,
                principal.workspace.as_str(),
                principal.user.as_str(),
                &filter,
                cursor.as_deref(),
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

/// The filters of `query`, each one of the values it can take, or 422 `invalid_query`.
fn checked_filter(query: &InstalledQuery) -> Result<projections::installed::Filter, Problem> {
    let status = match query.status.as_deref() {
        None => None,
        Some(status) => Some(
            projections::installed::STATUSES
                .into_iter()
                .find(|known| *known == status)
                .ok_or_else(|| {
                    invalid_query(format!(
                        "status must be one of {}",
                        projections::installed::STATUSES.join(", ")
                    ))
                })?,
        ),
    };
    let app = match query.app.as_deref() {
        None => None,
        Some(app) => Some(
            domain::catalog::app(app)
                .ok_or_else(|| {
                    invalid_query("app must be the id of an app of the catalog (GET /v1/apps)")
                })?
                .id,
        ),
    };
    let scope = match query.scope.as_deref() {
        None => None,
        Some(scope @ ("workspace" | "personal")) => Some(scope),
        Some(_) => return Err(invalid_query("scope must be workspace or personal")),
    };
    Ok(projections::installed::Filter {
        status: status.map(str::to_owned),
        app: app.map(str::to_owned),
        scope: scope.map(str::to_owned),
    })
}

/// A page's cursor as this list gives them out (`<app>/<integration id>`), normalized; any
/// other is 400 `bad_cursor`.
fn checked_cursor(cursor: &str) -> Result<String, Problem> {
    let bad = || {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            "the cursor is not one this list gave out",
        )
    };
    let (app, id) = cursor.rsplit_once('/').ok_or_else(bad)?;
    let app = domain::catalog::app(app).ok_or_else(bad)?;
    let id: domain::IntegrationId = id.parse().map_err(|_| bad())?;
    Ok(format!("{}/{id}", app.id))
}

/// A page of Marketplace > Installed, ordered by app then integration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Installed {
    integrations: Vec<projections::installed::InstalledRow>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}
