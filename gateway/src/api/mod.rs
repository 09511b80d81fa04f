//! The Marketplace API under `/v1`: who is calling (`caller`), strict JSON bodies (`body`),
//! and the routes by concern — the catalog (`catalog`), an integration's operations
//! (`integrations`, each a thin handler over the [`service`](crate::service) the console
//! shares), Installed (`installed`), the OAuth2 popup's end (`oauth`), mappings, Companion
//! actions, the auditors' endpoints and the event stream. Every route is registered with its
//! OpenAPI description (utoipa-axum), and every refusal is a
//! [`Problem`](crate::problem::Problem) carrying the domain's rule in words.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

mod actions;
mod audit;
mod body;
mod catalog;
mod events;
mod installed;
mod integrations;
mod mappings;
mod oauth;
pub(crate) mod query;

pub(crate) use crate::caller::{authenticate, Caller, Target};
pub(crate) use body::{Body, OptionalBody};
pub(crate) use events::{events, EventsQuery};

/// Every `/v1` route, each registered with the OpenAPI description of its handler: a route
/// cannot be served without being documented.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(catalog::apps))
        .routes(routes!(catalog::models))
        .routes(routes!(catalog::me))
        .routes(routes!(oauth::oauth_callback))
        .routes(routes!(catalog::personal_route, catalog::personal_write))
        .routes(routes!(installed::installed, integrations::connect))
        .routes(routes!(
            integrations::integration,
            integrations::delete_integration
        ))
        .routes(routes!(integrations::test))
        .routes(routes!(integrations::reauth))
        .routes(routes!(integrations::sync))
        .routes(routes!(integrations::schedule))
        .routes(routes!(integrations::disconnect))
        .routes(routes!(integrations::sync_logs))
        .routes(routes!(integrations::sync_run))
        .routes(routes!(mappings::get_mappings, mappings::put_mapping))
        .routes(routes!(actions::open_actions, actions::request_action))
        .routes(routes!(actions::get_action))
        .routes(routes!(actions::approve))
        .routes(routes!(actions::reject))
        .routes(routes!(actions::rules, actions::add_rule))
        .routes(routes!(actions::remove_rule))
        .routes(routes!(audit::history))
        .routes(routes!(audit::state_as_of))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::export))
        .routes(routes!(events::events))
}

/// The path of a workspace's route, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct WorkspacePath {
    /// The workspace.
    ws: String,
}

/// The path of an integration's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct IntegrationPath {
    /// The workspace.
    ws: String,
    /// The integration id.
    id: String,
}

/// The path of a Companion action's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct ActionPath {
    /// The workspace.
    ws: String,
    /// The integration id.
    id: String,
    /// The action id.
    action: String,
}

/// The path of one sync run's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct SyncRunPath {
    /// The workspace.
    ws: String,
    /// The integration id.
    id: String,
    /// The run's id (`sync_id` in the sync logs).
    sync_id: String,
}

/// The path of an approval rule's route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct RulePath {
    /// The workspace.
    ws: String,
    /// The approval rule id.
    rule: String,
}
