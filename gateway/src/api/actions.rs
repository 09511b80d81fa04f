//! Companion actions: Companion asks to use an integration's tool on a user's behalf; a
//! sensitive tool waits for an admin's approval (or a workspace rule that approves it), then the
//! action worker performs it at the provider. Approval rules are the workspace's policy.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::integration::Approver;
use domain::integration::{ActionPayload, ActionState, IntegrationCommand};
use domain::policy::{PolicyChange, PolicyCommand, WorkspacePolicy};
use domain::{ActionId, RuleId, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Body, Caller, OptionalBody, Target};
use crate::problem::repository_problem;
use crate::problem::Problem;
use crate::service::{command, load_visible};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionBody {
    /// One of the app's Companion tools.
    tool: String,
    /// The tool's arguments: a JSON object.
    #[serde(default = "empty_object")]
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Companion asks to use a tool. Answers 202 with the action's id and whether it waits for
/// approval.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/actions",
    tag = "actions",
    params(
        crate::api::IntegrationPath
    ),
    request_body = ActionBody,
    responses(
        (status = 202, description = "Requested: `action_id` and `status` (`awaiting_approval` or `approved`)", body = Action),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn request_action(
    State(state): State<AppState>,
    target: Target,
    Body(body): Body<ActionBody>,
) -> Result<Response, Problem> {
    let current = load_visible(&state, &target.caller, target.id).await?;
    let profile = current
        .profile
        .as_ref()
        .ok_or_else(|| crate::problem::not_found(target.id))?;
    // The workspace's policy says whether a rule approves this tool without asking.
    let policy = state
        .services
        .repository
        .load::<WorkspacePolicy>(&StreamName::workspace(&profile.workspace))
        .await
        .map_err(repository_problem)?
        .state;
    let auto_approval = policy.matching_rule(&profile.app, &body.tool, profile.scope.owner());
    let action_id = ActionId::new();
    let request = |arguments| IntegrationCommand::RequestAction {
        action_id,
        tool: body.tool.clone(),
        arguments,
        auto_approval,
    };
    // The rules first, on the arguments as given; then they are sealed for the history.
    domain::Aggregate::handle(
        &current,
        &request(ActionPayload::Plain(body.arguments.clone())),
        &target.caller.context(),
    )
    .map_err(|error| crate::problem::domain_problem(&error))?;
    let sealed = state
        .vault
        .seal(target.id, &body.arguments)
        .await
        .map_err(vault_problem)?;
    command(
        &state,
        &target.caller,
        target.id,
        request(ActionPayload::sealed(sealed)),
    )
    .await?;
    state.workers.actions.kick(target.id);
    let status = action_status(&state, &target, action_id).await?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// The actions still open on the integration: awaiting approval, or approved and not yet done.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/actions",
    tag = "actions",
    params(
        crate::api::IntegrationPath
    ),
    responses(
        (status = 200, description = "The actions awaiting approval or approved and not yet performed", body = OpenActions),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn open_actions(
    State(state): State<AppState>,
    Target { caller, id }: Target,
) -> Result<Json<OpenActions>, Problem> {
    let current = load_visible(&state, &caller, id).await?;
    let mut actions = Vec::new();
    for (action_id, action) in &current.open_actions {
        let arguments = state
            .vault
            .show(id, &action.arguments)
            .await
            .map_err(vault_problem)?;
        actions.push(OpenAction {
            action_id: action_id.to_string(),
            tool: action.tool.clone(),
            arguments,
            sensitive: action.sensitive,
            status: match action.status {
                domain::integration::ActionStatus::AwaitingApproval => {
                    ActionState::AwaitingApproval
                }
                domain::integration::ActionStatus::Approved => ActionState::Approved,
            },
        });
    }
    Ok(Json(OpenActions { actions }))
}

/// The actions still open on an integration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct OpenActions {
    actions: Vec<OpenAction>,
}

/// An action awaiting approval, or approved and not yet performed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct OpenAction {
    action_id: String,
    tool: String,
    /// The tool's arguments (`{"shredded": true}` once the integration's data was shredded).
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    arguments: Value,
    /// The tool asks for approval unless a rule approves it.
    sensitive: bool,
    status: ActionState,
}

/// An action's whole course so far, folded from the integration's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Action {
    action_id: String,
    status: ActionState,
    tool: String,
    /// The tool's arguments (`{"shredded": true}` once the integration's data was shredded).
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    arguments: Value,
    sensitive: bool,
    requested_by: String,
    /// RFC 3339.
    requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_by: Option<Approver>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_by: Option<String>,
    /// Why it was rejected, when the person said.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// What the provider answered, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, serde_json::Value>>)]
    result: Option<Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// RFC 3339, once completed or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
}

/// One action's whole course so far, from the integration's history.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/actions/{action}",
    tag = "actions",
    params(
        crate::api::ActionPath
    ),
    responses(
        (status = 200, description = "The action's course: status, who approved, result or error", body = Action),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, id, action)): Path<(String, String, String)>,
) -> Result<Json<Action>, Problem> {
    let target = Target::resolve(caller, &ws, &id)?;
    load_visible(&state, &target.caller, target.id).await?;
    let action_id = parse_action(&action)?;
    Ok(Json(action_status(&state, &target, action_id).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionBody {
    /// Why, for the history.
    reason: Option<String>,
}

/// Approves an action awaiting approval: the action worker performs it next.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/actions/{action}/approve",
    tag = "actions",
    params(
        crate::api::ActionPath
    ),
    request_body = Option<DecisionBody>,
    responses(
        (status = 200, description = "Approved: it is performed next", body = Action),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn approve(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String, String)>,
    body: OptionalBody<DecisionBody>,
) -> Result<Json<Action>, Problem> {
    decide(state, caller, path, body, true).await
}

/// Rejects an action awaiting approval: it is never performed.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/integrations/{id}/actions/{action}/reject",
    tag = "actions",
    params(
        crate::api::ActionPath
    ),
    request_body = Option<DecisionBody>,
    responses(
        (status = 200, description = "Rejected: it is never performed", body = Action),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn reject(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String, String)>,
    body: OptionalBody<DecisionBody>,
) -> Result<Json<Action>, Problem> {
    decide(state, caller, path, body, false).await
}

async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, id, action)): Path<(String, String, String)>,
    OptionalBody(body): OptionalBody<DecisionBody>,
    approve: bool,
) -> Result<Json<Action>, Problem> {
    let target = Target::resolve(caller, &ws, &id)?;
    let action_id = parse_action(&action)?;
    let reason = body.unwrap_or_default().reason;
    let decision = if approve {
        IntegrationCommand::ApproveAction { action_id, reason }
    } else {
        IntegrationCommand::RejectAction { action_id, reason }
    };
    if let Err(problem) = command(&state, &target.caller, target.id, decision).await {
        // A finished action is no longer open, but it exists: say what became of it.
        if problem.code == "unknown_action" {
            if let Ok(past) = action_status(&state, &target, action_id).await {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "action_state",
                    format!(
                        "action {action_id} is {} already: only an action awaiting approval \
                         can be approved or rejected",
                        past.status.as_str()
                    ),
                ));
            }
        }
        return Err(problem);
    }
    if approve {
        state.workers.actions.kick(target.id);
    }
    Ok(Json(action_status(&state, &target, action_id).await?))
}

/// An action's arguments or result as stored in an event, as the caller may see them (see
/// [`adapters::vault::Vault::show`]).
async fn shown(
    state: &AppState,
    integration: domain::IntegrationId,
    payload: &ActionPayload,
) -> Result<Value, Problem> {
    state
        .vault
        .show(integration, payload)
        .await
        .map_err(vault_problem)
}

fn vault_problem(error: adapters::vault::VaultError) -> Problem {
    match error {
        adapters::vault::VaultError::Shredded(_) => Problem::new(
            StatusCode::CONFLICT,
            "shredded",
            "the integration's data was shredded: it takes no more actions",
        ),
        other => Problem::failed("the vault cannot seal or open an action's data", &other),
    }
}

fn parse_action(text: &str) -> Result<ActionId, Problem> {
    text.parse().map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_action",
            format!("no action {text} here"),
        )
    })
}

/// An action's course (`awaiting_approval`, `approved`, `rejected`, `completed` with the
/// result or `failed` with the error), as the command layer reads it from the integration's
/// history, with its arguments and result opened for the caller.
async fn action_status(
    state: &AppState,
    target: &Target,
    action_id: ActionId,
) -> Result<Action, Problem> {
    let course = command::actions::course(state.store.as_ref(), target.id, action_id)
        .await
        .map_err(|error| match error {
            command::actions::CourseError::Store(error) => {
                Problem::failed("cannot read the event log", &error)
            }
            command::actions::CourseError::Decode(error) => {
                tracing::error!(%error, action = %action_id, "an action's event does not decode");
                Problem::internal()
            }
        })?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!("no action {action_id} here"),
            )
        })?;
    let result = match &course.result {
        Some(result) => Some(shown(state, target.id, result).await?),
        None => None,
    };
    Ok(Action {
        action_id: action_id.to_string(),
        status: course.state,
        tool: course.tool,
        arguments: shown(state, target.id, &course.arguments).await?,
        sensitive: course.sensitive,
        requested_by: course.requested_by.to_string(),
        requested_at: course.requested_at.to_string(),
        approved_by: course.approved_by,
        rejected_by: course.rejected_by.map(|user| user.to_string()),
        reason: course.reason,
        result,
        error: course.error,
        finished_at: course.finished_at.map(|at| at.to_string()),
    })
}

/// The workspace's auto-approval rules the caller can see: the workspace's, and their own
/// rules for personal apps.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/approval-rules",
    tag = "actions",
    params(
        crate::api::WorkspacePath
    ),
    responses(
        (status = 200, description = "The auto-approval rules the caller can see", body = Rules),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn rules(
    State(state): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
) -> Result<Json<Rules>, Problem> {
    let principal = caller.in_workspace(&ws)?;
    let policy = state
        .services
        .repository
        .load::<WorkspacePolicy>(&StreamName::workspace(&principal.workspace))
        .await
        .map_err(repository_problem)?
        .state;
    let rules = policy
        .rules
        .iter()
        .filter(|(_, rule)| rule.owner.as_ref().is_none_or(|o| *o == principal.user))
        .map(|(rule_id, rule)| Rule {
            rule_id: rule_id.to_string(),
            app: rule.app.clone(),
            tool: rule.tool.clone(),
            personal: rule.owner.is_some(),
        })
        .collect();
    Ok(Json(Rules { rules }))
}

/// The auto-approval rules a caller can see.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Rules {
    rules: Vec<Rule>,
}

/// A rule that approves an app's sensitive tool without asking.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Rule {
    rule_id: String,
    app: String,
    tool: String,
    /// For the caller's own personal integration of a personal app, not the workspace's.
    personal: bool,
}

/// A rule, as added (or found already there).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RuleAdded {
    rule_id: String,
    app: String,
    tool: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleBody {
    app: String,
    /// A sensitive tool of the app: from now on it is performed without asking.
    tool: String,
}

/// Adds a rule that approves a sensitive tool without asking: for the workspace's integration
/// of a workspace app (admins and members with the permission), or for the caller's own
/// personal integration of a personal app.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/approval-rules",
    tag = "actions",
    params(
        crate::api::WorkspacePath
    ),
    request_body = RuleBody,
    responses(
        (status = 201, description = "The rule added: `rule_id`", body = RuleAdded),
        (status = 200, description = "The same rule existed: its `rule_id`", body = RuleAdded),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn add_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(ws): Path<String>,
    Body(body): Body<RuleBody>,
) -> Result<Response, Problem> {
    let principal = caller.in_workspace(&ws)?.clone();
    let rule_id = RuleId::new();
    let stream = StreamName::workspace(&principal.workspace);
    let executed = state
        .services
        .repository
        .execute::<WorkspacePolicy>(
            &stream,
            &PolicyCommand {
                workspace: principal.workspace.clone(),
                change: PolicyChange::AddApprovalRule {
                    rule_id,
                    app: body.app.clone(),
                    tool: body.tool.clone(),
                },
            },
            &caller.context(),
        )
        .await
        .map_err(repository_problem)?;
    // The same rule asked for twice is the one rule.
    let owner = executed
        .state
        .rules
        .iter()
        .find(|(_, rule)| {
            rule.app == body.app
                && rule.tool == body.tool
                && rule.owner.as_ref().is_none_or(|o| *o == principal.user)
        })
        .map(|(id, _)| *id)
        .unwrap_or(rule_id);
    let status = if executed.events.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(RuleAdded {
            rule_id: owner.to_string(),
            app: body.app,
            tool: body.tool,
        }),
    )
        .into_response())
}

/// Removes an approval rule: the tool asks for approval again.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{ws}/approval-rules/{rule}",
    tag = "actions",
    params(
        crate::api::RulePath
    ),
    responses(
        (status = 204, description = "Removed: the tool asks for approval again"),
        crate::problem::ReadRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn remove_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, rule)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let principal = caller.in_workspace(&ws)?.clone();
    let rule_id: RuleId = rule.parse().map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_rule",
            format!("no rule {rule} here"),
        )
    })?;
    state
        .services
        .repository
        .execute::<WorkspacePolicy>(
            &StreamName::workspace(&principal.workspace),
            &PolicyCommand {
                workspace: principal.workspace.clone(),
                change: PolicyChange::RemoveApprovalRule { rule_id },
            },
            &caller.context(),
        )
        .await
        .map_err(repository_problem)?;
    Ok(StatusCode::NO_CONTENT)
}
