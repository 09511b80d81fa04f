//! The console's pages, rendered on the server with maud. Every page reads without
//! JavaScript; `console.js` adds the OAuth popup and live status on top.

use maud::{html, Markup, DOCTYPE};
use projections::installed::InstalledRow;
use projections::sync_runs::SyncRun;

use super::session::Session;

/// Which Marketplace tab a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tab {
    Apps,
    Installed,
    Models,
    None,
}

/// A notice or an error carried over a redirect (`?notice=` / `?error=`).
pub(crate) struct Flash<'a> {
    pub(crate) notice: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
}

pub(crate) fn page(
    title: &str,
    session: Option<&Session>,
    tab: Tab,
    flash: &Flash<'_>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Harmony Marketplace" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header.top {
                    a.brand href="/console" { "Harmony Marketplace" }
                    @if let Some(session) = session {
                        nav aria-label="Marketplace" {
                            a href="/console/apps" aria-current=[(tab == Tab::Apps).then_some("page")] { "Apps" }
                            a href="/console/installed" aria-current=[(tab == Tab::Installed).then_some("page")] { "Installed" }
                            a href="/console/models" aria-current=[(tab == Tab::Models).then_some("page")] { "Models" }
                        }
                        form.signout method="post" action="/console/sign-out" {
                            (csrf(session))
                            span.who { (session.principal.user) " · " (session.principal.workspace) " · " (session.principal.role) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if let Some(notice) = flash.notice { p.notice role="status" { (notice) } }
                    @if let Some(error) = flash.error { p.error role="alert" { (error) } }
                    (body)
                }
                script src="/console/console.js" defer {}
            }
        }
    }
}

pub(crate) fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

pub(crate) fn sign_in(nonce: &str, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        Tab::None,
        &Flash {
            notice: None,
            error,
        },
        html! {
            h1 { "Sign in" }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(nonce);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required;
                p.hint { "An operator creates one with " code { "harmony tokens create" } "." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub(crate) fn status_badge(status: &str) -> Markup {
    html! { span class={"badge " (status)} { (status.replace('_', " ")) } }
}

/// The live part of an integration's page: its status and last sync.
pub(crate) fn status(row: &InstalledRow) -> Markup {
    html! {
        dl.facts {
            dt { "Status" } dd #status { (status_badge(&row.status)) }
            dt { "Last sync" }
            dd #last-sync {
                @match (&row.last_sync_at, &row.last_sync_outcome) {
                    (Some(at), Some(outcome)) => { (outcome) " at " (at) }
                    _ => { "never" }
                }
            }
            dt { "Records" } dd #records { (row.records_pulled) " pulled, " (row.records_created) " created, " (row.records_updated) " updated, " (row.records_deleted) " deleted" }
            dt { "Last change" }
            dd #last-change {
                @match (&row.last_changed_at, &row.last_sync_at) {
                    (Some(changed), Some(checked)) if changed < checked => { (changed) "; nothing new since, last checked " (checked) }
                    (Some(changed), _) => { (changed) }
                    (None, Some(checked)) => { "none found yet; last checked " (checked) }
                    (None, None) => { "never checked" }
                }
            }
        }
    }
}

/// The SVG bar chart of records pulled per run, oldest on the left.
pub(crate) fn runs_chart(runs: &[SyncRun]) -> Markup {
    let max = runs.iter().map(|r| r.pulled).max().unwrap_or(0).max(1);
    let width = 24 * runs.len().max(1);
    html! {
        svg.chart role="img" aria-label="Records pulled per run, oldest first" width=(width) height="80" viewBox={"0 0 " (width) " 80"} {
            @for (n, run) in runs.iter().rev().enumerate() {
                @let height = (run.pulled * 70 / max).max(1);
                rect x=(n * 24 + 4) y=(78 - height) width="16" height=(height) class=(run.status) {
                    title { (run.pulled) " records, " (run.status) }
                }
            }
        }
    }
}
