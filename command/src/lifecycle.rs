//! The parts of an integration's life that span two streams.
//!
//! "One active connection per app per scope owner" cannot be checked inside one integration's
//! stream, so a connect first reserves the app's slot on the workspace policy stream — an
//! append with an expected version, which the log serializes whatever process it comes from —
//! and only then writes `IntegrationConnected`. Disconnect and delete release the slot.
//!
//! A process can die between the two appends. The slot then points at an integration stream
//! that is empty (the connect never finished) or ended (the release never happened). The next
//! connect of that app repairs it: an ended holder's slot is released at once; an empty one is
//! released only after `abandon_after`, and first closed with `ConnectionAbandoned` appended
//! with `NoStream`, so that the slow connect, if it is still alive, fails its own `NoStream`
//! append instead of creating a second active connection.

use std::time::Duration;

use domain::integration::ConnectIntegration;
use domain::policy::{PolicyChange, PolicyCommand, SlotHolding};
use domain::{
    Aggregate, Caller, CommandContext, DomainError, Integration, IntegrationCommand, IntegrationId,
    StreamName, UserId, WorkspacePolicy,
};

use crate::repository::{Executed, Repository, RepositoryError};

pub use domain::policy::DEFAULT_ABANDON_AFTER;

fn policy_command(workspace: &domain::WorkspaceId, change: PolicyChange) -> PolicyCommand {
    PolicyCommand {
        workspace: workspace.clone(),
        change,
    }
}

/// Connects an app: reserves its slot, then appends `IntegrationConnected`.
pub async fn connect(
    repository: &Repository,
    context: &CommandContext,
    command: ConnectIntegration,
    abandon_after: Duration,
) -> Result<Executed<Integration>, RepositoryError> {
    let Caller::User(principal) = &context.caller else {
        return Err(DomainError::Forbidden("an integration is connected by a user").into());
    };
    let connect = IntegrationCommand::Connect(command.clone());
    // Every rule of the connect itself is checked before the slot is touched, so a refused
    // connect leaves no trace.
    Integration::default().handle(&connect, context)?;
    let owner: Option<UserId> =
        (command.scope == domain::catalog::AppScope::Personal).then(|| principal.user.clone());
    let workspace = principal.workspace.clone();
    let policy_stream = StreamName::workspace(&workspace);
    let system = CommandContext {
        caller: Caller::system("connection slot repair"),
        now: context.now,
        correlation_id: context.correlation_id,
        causation_id: context.causation_id,
    };

    for _ in 0..repository.max_attempts {
        let policy = repository
            .load::<WorkspacePolicy>(&policy_stream)
            .await?
            .state;
        let Some(holder) = policy.slot(&command.app, owner.as_ref()).cloned() else {
            let reserve = policy_command(
                &workspace,
                PolicyChange::ReserveConnectionSlot {
                    app: command.app.clone(),
                    owner: owner.clone(),
                    integration: command.integration,
                },
            );
            repository
                .execute::<WorkspacePolicy>(&policy_stream, &reserve, context)
                .await?;
            break;
        };
        if holder.integration == command.integration {
            break;
        }
        let holder_stream = StreamName::integration(holder.integration);
        let holder_state = repository.load::<Integration>(&holder_stream).await?.state;
        let taken = DomainError::SlotTaken {
            app: command.app.clone(),
            holder: holder.integration,
        };
        match holder.holding(holder_state.status, context.now, abandon_after) {
            SlotHolding::Taken => return Err(taken.into()),
            SlotHolding::Abandon => {
                let abandon = IntegrationCommand::Abandon {
                    workspace: workspace.clone(),
                    owner: owner.clone(),
                    app: command.app.clone(),
                    reason: format!(
                        "a new connect found this one unfinished after {}s",
                        abandon_after.as_secs()
                    ),
                };
                match repository
                    .execute::<Integration>(&holder_stream, &abandon, &system)
                    .await
                {
                    // The slow connect finished after all: loop and see it as connected.
                    Err(RepositoryError::Domain(DomainError::AlreadyConnected)) => continue,
                    Err(error) => return Err(error),
                    Ok(_) => {}
                }
                release(
                    repository,
                    &workspace,
                    &command.app,
                    owner.clone(),
                    holder.integration,
                    "abandoned connect",
                    &system,
                )
                .await?;
            }
            SlotHolding::Release => {
                release(
                    repository,
                    &workspace,
                    &command.app,
                    owner.clone(),
                    holder.integration,
                    "holder already ended",
                    &system,
                )
                .await?;
            }
        }
    }

    let stream = StreamName::integration(command.integration);
    match repository
        .execute::<Integration>(&stream, &connect, context)
        .await
    {
        Ok(executed) => Ok(executed),
        Err(error) => {
            // Give the slot back; if this fails too, the next connect repairs it.
            let _ = release(
                repository,
                &workspace,
                &command.app,
                owner,
                command.integration,
                "connect failed",
                &system,
            )
            .await;
            Err(error)
        }
    }
}

async fn release(
    repository: &Repository,
    workspace: &domain::WorkspaceId,
    app: &str,
    owner: Option<UserId>,
    integration: IntegrationId,
    reason: &str,
    context: &CommandContext,
) -> Result<(), RepositoryError> {
    let change = PolicyChange::ReleaseConnectionSlot {
        app: app.to_owned(),
        owner,
        integration,
        reason: reason.to_owned(),
    };
    repository
        .execute::<WorkspacePolicy>(
            &StreamName::workspace(workspace),
            &policy_command(workspace, change),
            context,
        )
        .await
        .map(|_| ())
}

/// Disconnects (or deletes, which disconnects first when needed) and frees the app's slot.
pub async fn end(
    repository: &Repository,
    context: &CommandContext,
    integration: IntegrationId,
    command: IntegrationCommand,
) -> Result<Executed<Integration>, RepositoryError> {
    debug_assert!(matches!(
        command,
        IntegrationCommand::Disconnect { .. } | IntegrationCommand::Delete { .. }
    ));
    let stream = StreamName::integration(integration);
    let executed = repository
        .execute::<Integration>(&stream, &command, context)
        .await?;
    if let Some(profile) = &executed.state.profile {
        let system = CommandContext {
            caller: Caller::system("integration ended"),
            ..context.clone()
        };
        let reason = if matches!(command, IntegrationCommand::Delete { .. }) {
            "deleted"
        } else {
            "disconnected"
        };
        release(
            repository,
            &profile.workspace,
            &profile.app,
            profile.scope.owner().cloned(),
            integration,
            reason,
            &system,
        )
        .await?;
    }
    Ok(executed)
}
