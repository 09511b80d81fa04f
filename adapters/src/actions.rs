//! The Companion action worker: performs approved actions at their provider and records how
//! each ended.
//!
//! It follows the log. An `ActionApproved` (by a person, by an auto-approval rule, or at once
//! for a tool that is not sensitive) makes it look at the integration and push every approved
//! action still open, under a lease per action so that several processes never push the same
//! one. The action's id is the push's idempotency key. `ActionCompleted` carries the
//! provider's answer, sealed under the integration's data key like the arguments (both are
//! personal data; see ADR 006); `ActionFailed` carries the reason and whether trying again
//! could help.
//! A refused token is refreshed once; a dead grant also marks the integration as needing
//! reauthentication.
//!
//! A tool the provider would perform twice (an SMS, an email) is marked before it is pushed;
//! found marked again after a crash, its outcome is unknown, and the action fails saying so
//! rather than risk sending twice. Restarted, the worker replays from the oldest approval it
//! had not finished, so no approved action is forgotten.

use async_trait::async_trait;
use eventstore::follow::{Follower, InFlight};
use eventstore::RecordedEvent;
use tracing::Instrument;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command::repository::{Repository, RepositoryError};
use database::ServiceDb;
use domain::aggregate::CommandContext;
use domain::integration::{
    ActionPayload, ActionStatus, ExpiryReason, Integration, IntegrationCommand,
};
use domain::principal::Caller;
use domain::{ActionId, DomainError, IntegrationId, StreamName, Timestamp};
use eventstore::StoreError;
use serde_json::Value;

use crate::http::ProviderError;
use crate::provider::Connection;
use crate::providers::Providers;
use crate::sync::CredentialSource;
use crate::vault::Vault;
use database::lease::Leases;

const DISPATCH_CHECKPOINT: &str = "action_dispatch";
/// How long one push may hold its action.
const ACTION_LEASE: Duration = Duration::from_secs(300);
/// How soon an action another process holds is looked at again: done there by then, or taken
/// over here once a dead process's lease has run out.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// A mark that an attempt of a non-repeatable push began; kept until the outcome is recorded.
const ATTEMPT_MARK: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Performs approved Companion actions.
#[derive(Clone, Debug)]
pub struct ActionWorker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    repo: Arc<Repository>,
    db: ServiceDb,
    /// Opens the sealed arguments and seals the provider's answer.
    vault: Arc<Vault>,
    credentials: Arc<dyn CredentialSource>,
    providers: Providers,
    leases: Leases,
    /// Integrations being worked on, and whether another look was asked meanwhile.
    active: Mutex<HashMap<IntegrationId, bool>>,
    idle: tokio::sync::Notify,
}

fn context() -> CommandContext {
    CommandContext::new(Caller::system("action worker"), Timestamp::now())
}

/// What became of one push.
enum Outcome {
    Completed(Value),
    Failed {
        error: String,
        retryable: bool,
        expired: Option<(ExpiryReason, String)>,
    },
}

impl ActionWorker {
    pub fn new(
        repo: Arc<Repository>,
        db: ServiceDb,
        vault: Arc<Vault>,
        credentials: Arc<dyn CredentialSource>,
        providers: Providers,
        leases: Leases,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                repo,
                db,
                vault,
                credentials,
                providers,
                leases,
                active: Mutex::default(),
                idle: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Follows the log and performs approved actions, until the subscription ends.
    pub async fn follow(&self) -> Result<(), StoreError> {
        let mut dispatch = Dispatch {
            worker: self.clone(),
            held: InFlight::default(),
        };
        crate::dispatch::follow(
            self.inner.repo.store().as_ref(),
            &self.inner.db,
            DISPATCH_CHECKPOINT,
            &mut dispatch,
        )
        .await
    }

    /// Makes sure the integration's approved actions get performed.
    pub fn kick(&self, id: IntegrationId) {
        {
            let mut active = self.inner.active.lock().expect("active actions lock");
            if let Some(again) = active.get_mut(&id) {
                *again = true;
                return;
            }
            active.insert(id, false);
        }
        let worker = self.clone();
        tokio::spawn(async move {
            loop {
                let waiting = match worker.work_on(id).await {
                    Ok(waiting) => waiting,
                    Err(error) => {
                        tracing::warn!(integration = %id, %error, "performing actions stopped with an error");
                        false
                    }
                };
                if waiting {
                    tokio::time::sleep(LOOK_AGAIN).await;
                }
                let mut active = worker.inner.active.lock().expect("active actions lock");
                let again = active.get_mut(&id).is_some_and(std::mem::take) || waiting;
                if !again {
                    active.remove(&id);
                    drop(active);
                    worker.inner.idle.notify_waiters();
                    return;
                }
            }
        }
        .instrument(tracing::info_span!("action_worker", integration = %id)));
    }

    /// Waits until no action is being performed.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self
                .inner
                .active
                .lock()
                .expect("active actions lock")
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }

    /// Performs the integration's approved actions. Whether one was left because another
    /// process holds its lease: performing it there, or dead with its lease not yet run out.
    async fn work_on(&self, id: IntegrationId) -> Result<bool, RepositoryError> {
        let stream = StreamName::integration(id);
        let state = self.inner.repo.load::<Integration>(&stream).await?.state;
        let approved: Vec<(ActionId, String, ActionPayload)> = state
            .open_actions
            .iter()
            .filter(|(_, action)| action.status == ActionStatus::Approved)
            .map(|(id, action)| (*id, action.tool.clone(), action.arguments.clone()))
            .collect();
        let mut waiting = false;
        for (action_id, tool, arguments) in approved {
            let lease = format!("action:{action_id}");
            match self.inner.leases.try_acquire(&lease, ACTION_LEASE).await {
                Ok(true) => {}
                Ok(false) => {
                    waiting = true;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%action_id, %error, "could not take an action's lease");
                    continue;
                }
            }
            let outcome = match self.inner.vault.show(id, &arguments).await {
                Ok(arguments) => {
                    self.perform(id, &state, action_id, &tool, &arguments)
                        .instrument(tracing::info_span!("action", action = %action_id, %tool))
                        .await
                }
                Err(error) => Outcome::Failed {
                    error: format!("the action's arguments cannot be read: {error}"),
                    retryable: false,
                    expired: None,
                },
            };
            self.record(id, &stream, action_id, outcome).await?;
            let _ = self
                .inner
                .leases
                .release(&format!("attempt:{action_id}"))
                .await;
            let _ = self.inner.leases.release(&lease).await;
        }
        Ok(waiting)
    }

    async fn perform(
        &self,
        id: IntegrationId,
        state: &Integration,
        action_id: ActionId,
        tool: &str,
        arguments: &Value,
    ) -> Outcome {
        let app = state.profile.as_ref().map_or("", |p| p.app.as_str());
        let Some(provider) = self.inner.providers.get(app) else {
            return Outcome::Failed {
                error: format!("no client for {app} is configured"),
                retryable: false,
                expired: None,
            };
        };
        if !provider.repeatable(tool) {
            let mark = format!("attempt:{action_id}");
            match self.inner.leases.holder_of(&mark).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Outcome::Failed {
                        error: format!(
                            "an earlier attempt may have reached {}; {tool} is not repeated, \
                             to be sure it is not done twice",
                            provider.app().name
                        ),
                        retryable: false,
                        expired: None,
                    }
                }
                Err(error) => {
                    return Outcome::Failed {
                        error: format!("could not check earlier attempts: {error}"),
                        retryable: true,
                        expired: None,
                    }
                }
            }
            if let Err(error) = self.inner.leases.try_acquire(&mark, ATTEMPT_MARK).await {
                return Outcome::Failed {
                    error: format!("could not mark the attempt: {error}"),
                    retryable: true,
                    expired: None,
                };
            }
        }
        let key = action_id.to_string();
        let pushed = async {
            let mut credentials = self.inner.credentials.current(id, state).await?;
            let setup = &state.setup;
            let first = provider
                .push(
                    Connection {
                        setup,
                        credentials: &credentials,
                    },
                    tool,
                    arguments,
                    &key,
                )
                .await;
            match first {
                // A refused token: the provider did nothing, so trying again is safe.
                Err(ProviderError::Unauthorized { .. }) => {
                    let stale = credentials.clone();
                    credentials = self.inner.credentials.refresh(id, &stale).await?;
                    provider
                        .push(
                            Connection {
                                setup,
                                credentials: &credentials,
                            },
                            tool,
                            arguments,
                            &key,
                        )
                        .await
                }
                other => other,
            }
        }
        .await;
        match pushed {
            Ok(result) => Outcome::Completed(result),
            Err(
                error @ (ProviderError::InvalidGrant { .. } | ProviderError::Unauthorized { .. }),
            ) => {
                let reason = if matches!(error, ProviderError::InvalidGrant { .. }) {
                    ExpiryReason::InvalidGrant
                } else {
                    ExpiryReason::Revoked
                };
                Outcome::Failed {
                    error: error.to_string(),
                    retryable: false,
                    expired: Some((reason, error.to_string())),
                }
            }
            Err(error) => Outcome::Failed {
                retryable: error.retryable(),
                error: error.to_string(),
                expired: None,
            },
        }
    }

    async fn record(
        &self,
        id: IntegrationId,
        stream: &StreamName,
        action_id: ActionId,
        outcome: Outcome,
    ) -> Result<(), RepositoryError> {
        let (command, expired) = match outcome {
            Outcome::Completed(result) => {
                // The answer is personal data: the history keeps it sealed.
                let result = match self.inner.vault.seal(id, &result).await {
                    Ok(sealed) => ActionPayload::sealed(sealed),
                    Err(error) => {
                        tracing::warn!(%action_id, %error, "the action's result cannot be sealed; it is not kept");
                        ActionPayload::Plain(serde_json::json!({ "withheld": true }))
                    }
                };
                (
                    IntegrationCommand::CompleteAction { action_id, result },
                    None,
                )
            }
            Outcome::Failed {
                error,
                retryable,
                expired,
            } => (
                IntegrationCommand::FailAction {
                    action_id,
                    error,
                    retryable,
                },
                expired,
            ),
        };
        let mut commands = vec![command];
        if let Some((reason, detail)) = expired {
            commands.push(IntegrationCommand::MarkCredentialsExpired { reason, detail });
        }
        for command in &commands {
            match self
                .inner
                .repo
                .execute::<Integration>(stream, command, &context())
                .await
            {
                Ok(_) => {}
                // Finished meanwhile (a disconnect closes open actions), or already marked.
                Err(RepositoryError::Domain(
                    DomainError::ActionState { .. }
                    | DomainError::UnknownAction(_)
                    | DomainError::Disconnected
                    | DomainError::Deleted
                    | DomainError::NeedsReauth,
                )) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The action worker's reading of the log: an approval gets the integration's actions
/// performed, and stays held until the integration is idle.
struct Dispatch {
    worker: ActionWorker,
    held: InFlight,
}

#[async_trait]
impl Follower for Dispatch {
    async fn on_event(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        if let Some(id) = event.stream.integration_id() {
            if domain::IntegrationEventKind::of(&event.event_type)
                == Some(domain::IntegrationEventKind::ActionApproved)
            {
                // The runner reads the stream through this process's store, maybe from a
                // replica behind the event it acts on.
                self.worker
                    .inner
                    .repo
                    .store()
                    .observed(&event.stream, event.version);
                self.held.hold(event.position, id);
                self.worker.kick(id);
            }
        }
        Ok(())
    }

    fn oldest_open(&mut self) -> Option<u64> {
        let active = self
            .worker
            .inner
            .active
            .lock()
            .expect("active actions lock");
        self.held.oldest(|id| active.contains_key(id))
    }
}
