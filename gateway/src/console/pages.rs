//! An integration's mappings editor, sync logs and history pages.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use domain::integration::FieldMapping;
use domain::{StreamName, Timestamp};
use maud::html;
use serde::Deserialize;

use super::{
    checked, context, csrf, error_page, html_page, may_manage, notice, page, refused, status_badge,
    views, visible, Fields, Flash, FlashQuery, Session, Tab,
};
use crate::problem::Problem;
use crate::AppState;

fn title(row: &projections::installed::InstalledRow, what: &str) -> String {
    let name = domain::catalog::app(&row.app).map_or(row.app.as_str(), |a| a.name);
    format!("{name}: {what}")
}

pub(super) async fn mappings(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Response {
    let (id, current, row) = match visible(&state, &session, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(app) = domain::catalog::app(&row.app) else {
        return error_page(
            &session,
            StatusCode::NOT_FOUND,
            &Problem::new(StatusCode::NOT_FOUND, "not_found", "no such app"),
        );
    };
    let manage = may_manage(&session, &current);
    let mut objects = Vec::new();
    for object in app.capabilities.mappings {
        // The provider's fields now, custom ones included; its standard ones if it cannot be
        // reached.
        let fields = state
            .services
            .connections
            .provider_fields(
                &context(&session),
                id,
                object.name,
                state.services.credentials.as_ref(),
            )
            .await
            .unwrap_or_else(|_| {
                object
                    .provider_fields
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect()
            });
        objects.push((object, fields));
    }
    let body = html! {
        h1 { (title(&row, "mappings")) }
        p { "Version " (current.mapping_version) ". Choose which " (app.name) " field fills each Harmony field." }
        @for (object, fields) in &objects {
            @let mapped = current.mappings.get(object.name);
            form method="post" action={"/console/integrations/" (id) "/mappings"} {
                fieldset {
                    legend { (object.name) " → Harmony " (object.harmony_object) }
                    (csrf(&session))
                    input type="hidden" name="object" value=(object.name);
                    input type="hidden" name="expected_version" value=(current.mapping_version);
                    @for harmony in object.harmony_fields {
                        @let chosen = mapped.and_then(|m| m.fields.iter().find(|f| f.harmony_field == *harmony)).map(|f| f.provider_field.as_str());
                        label for={"map-" (object.name) "-" (harmony)} { (harmony) }
                        select id={"map-" (object.name) "-" (harmony)} name={"map." (harmony)} disabled[!manage] {
                            option value="" selected[chosen.is_none()] { "(not mapped)" }
                            @for field in fields {
                                option value=(field) selected[chosen == Some(field.as_str())] { (field) }
                            }
                        }
                    }
                    @if manage { p { button type="submit" { "Save the " (object.name) " mapping" } } }
                }
            }
        }
        p { a href={"/console/integrations/" (id)} { "Back to " (app.name) } }
    };
    html_page(page(
        &title(&row, "mappings"),
        Some(&session),
        Tab::Installed,
        &q.flash(),
        body,
    ))
}

pub(super) async fn save_mapping(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    let parsed = match checked(&session, &id, &form) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let back = format!("/console/integrations/{id}/mappings");
    let object = form.get("object").cloned().unwrap_or_default();
    let expected = form.get("expected_version").and_then(|v| v.parse().ok());
    let mut fields: Vec<FieldMapping> = form
        .iter()
        .filter_map(|(name, value)| {
            let harmony = name.strip_prefix("map.")?;
            (!value.is_empty()).then(|| FieldMapping {
                provider_field: value.clone(),
                harmony_field: harmony.to_owned(),
                transform: None,
            })
        })
        .collect();
    fields.sort_by(|a, b| a.harmony_field.cmp(&b.harmony_field));
    match state
        .services
        .connections
        .change_mapping(
            &context(&session),
            parsed,
            &object,
            fields,
            expected,
            state.services.credentials.as_ref(),
        )
        .await
    {
        Ok(version) => notice(
            &back,
            &format!("Saved: the mappings are at version {version}"),
        ),
        Err(error) => refused(&back, &crate::problem::connect_problem(error)),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LogsQuery {
    status: Option<String>,
    kind: Option<String>,
    cursor: Option<i64>,
    notice: Option<String>,
    error: Option<String>,
}

pub(super) async fn sync_logs(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let (id, _, row) = match visible(&state, &session, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let empty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let filter = projections::sync_runs::Filter {
        status: empty(&q.status),
        kind: empty(&q.kind),
        since: None,
        until: None,
    };
    let principal = &session.principal;
    let runs = match projections::sync_runs::list(
        &state.db,
        principal.workspace.as_str(),
        principal.user.as_str(),
        id,
        &filter,
        q.cursor,
        20,
    )
    .await
    {
        Ok(runs) => runs,
        Err(error) => {
            let problem = Problem::failed("cannot read the sync logs", &error);
            return error_page(&session, problem.status, &problem);
        }
    };
    let option = |value: &str, current: &Option<String>| current.as_deref() == Some(value);
    let body = html! {
        h1 { (title(&row, "sync logs")) }
        form method="get" action={"/console/integrations/" (id) "/sync-logs"} {
            div.actions {
                div {
                    label for="status" { "Status" }
                    select #status name="status" {
                        option value="" { "any" }
                        @for s in ["requested", "running", "completed", "failed", "cancelled"] { option value=(s) selected[option(s, &q.status)] { (s) } }
                    }
                }
                div {
                    label for="kind" { "Kind" }
                    select #kind name="kind" {
                        option value="" { "any" }
                        @for k in ["full", "incremental"] { option value=(k) selected[option(k, &q.kind)] { (k) } }
                    }
                }
            }
            p { button type="submit" { "Filter" } }
        }
        @if runs.runs.is_empty() {
            p { "No sync runs match." }
        } @else {
            (views::runs_chart(&runs.runs))
            div.table {
                table {
                    thead { tr { th scope="col" { "Requested" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Pulled" } th scope="col" { "Created / updated / deleted" } th scope="col" { "Duration" } } }
                    tbody {
                        @for run in &runs.runs {
                            tr.run {
                                td { (run.requested_at) }
                                td { (run.kind) " (" (run.trigger_kind) ")" }
                                td {
                                    (status_badge(&run.status))
                                    @if run.checks > 1 { br; small { (run.checks) " checks that found nothing, " (run.first_checked_at.as_deref().unwrap_or("?")) " to " (run.last_checked_at.as_deref().unwrap_or("?")) } }
                                    @if let Some(message) = &run.error_message { br; small { (message) } }
                                }
                                td { (run.pulled) }
                                td { (run.created) " / " (run.updated) " / " (run.deleted) }
                                td { @if let Some(ms) = run.duration_ms { (ms) " ms" } }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = runs.next_cursor {
                p { a href={"/console/integrations/" (id) "/sync-logs?cursor=" (next) "&status=" (q.status.clone().unwrap_or_default()) "&kind=" (q.kind.clone().unwrap_or_default())} { "Older runs" } }
            }
        }
        p { a href={"/console/integrations/" (id)} { "Back" } }
    };
    let flash = Flash {
        notice: q.notice.as_deref(),
        error: q.error.as_deref(),
    };
    html_page(page(
        &title(&row, "sync logs"),
        Some(&session),
        Tab::Installed,
        &flash,
        body,
    ))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct HistoryQuery {
    /// `datetime-local` (UTC) or RFC 3339.
    as_of: Option<String>,
}

fn parse_moment(text: &str) -> Option<Timestamp> {
    Timestamp::parse(text)
        .ok()
        .or_else(|| Timestamp::parse(&format!("{text}:00Z")).ok())
        .or_else(|| Timestamp::parse(&format!("{text}Z")).ok())
}

pub(super) async fn history(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let (id, _, row) = match visible(&state, &session, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let stream = StreamName::integration(id);
    let events = match state.store.read_stream(&stream, 1, 1000).await {
        Ok(events) => events,
        Err(error) => {
            let problem = Problem::failed("cannot read a history", &error);
            return error_page(&session, problem.status, &problem);
        }
    };
    let verified = state
        .checkpoints
        .verify(state.store.as_ref(), &stream)
        .await
        .ok();
    let checkpoint = verified.as_ref().map(|v| &v.checkpoint);
    let moment = q
        .as_of
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|text| (text, parse_moment(text)));
    let then = match moment {
        Some((_, Some(at))) => state
            .services
            .repository
            .load_as_of::<domain::Integration>(&stream, at)
            .await
            .ok()
            .map(|loaded| {
                (
                    at,
                    loaded.version,
                    projections::installed::row_of(&loaded.state),
                )
            }),
        _ => None,
    };
    let intact = verified.as_ref().is_some_and(|v| v.is_intact());
    let body = html! {
        h1 { (title(&row, "history")) }
        section #verification {
            h2 { "Verification" }
            @if intact {
                p.notice { "The chain of " (events.len()) " events is intact."
                    @if let Some(command::checkpoints::CheckpointCheck::Holds { version, signed_at }) = checkpoint { " The service's signed checkpoint at version " (version) " (" (signed_at) ") holds." } }
            } @else {
                p.error { "The history does not verify: "
                    @if let Some(broken) = verified.as_ref().and_then(|v| v.chain.broken.as_ref()) { "version " (broken.version) ": " (broken.reason) }
                    @if let Some(command::checkpoints::CheckpointCheck::Broken { reason, .. }) = checkpoint { (reason) } }
            }
        }
        section {
            h2 { "As of a moment" }
            form method="get" action={"/console/integrations/" (id) "/history"} {
                label for="as_of" { "Show the state at (UTC)" }
                input #as_of type="datetime-local" step="1" name="as_of" value=(q.as_of.clone().unwrap_or_default());
                button type="submit" { "Show" }
            }
            @match (moment, &then) {
                (Some((text, None)), _) => { p.error { (text) " is not a time: use the picker, or RFC 3339 such as 2026-11-28T10:00:00Z." } }
                (_, Some((at, version, Some(then_row)))) => {
                    p { "At " (at) ", after " (version) " events:" }
                    (views::status(then_row))
                }
                (_, Some((at, _, None))) => { p { "At " (at) " it was not connected (or no longer existed)." } }
                _ => {}
            }
        }
        section {
            h2 { "Timeline" }
            ol.timeline {
                @for event in &events {
                    li { time datetime=(event.metadata.occurred_at) { (event.metadata.occurred_at) } " — " strong { (event.event_type) } " by " (event.metadata.actor) }
                }
            }
        }
        p { a href={"/console/integrations/" (id)} { "Back" } }
    };
    html_page(page(
        &title(&row, "history"),
        Some(&session),
        Tab::Installed,
        &Flash {
            notice: None,
            error: None,
        },
        body,
    ))
}
