//! Deciding the commands of an integration's connection: connect, tests, credentials,
//! reauth, disconnect, delete, and closing a connect that never finished.

use super::*;
use crate::ids::UserId;
use IntegrationEvent as E;

impl Integration {
    /// A connect that reserved a slot and never finished: its stream is closed (system only).
    pub(super) fn abandon(
        &self,
        context: &CommandContext,
        workspace: &WorkspaceId,
        owner: &Option<UserId>,
        app: &str,
        reason: &str,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        if !matches!(context.caller, Caller::System { .. }) {
            return Err(DomainError::Forbidden(
                "only the service itself records this",
            ));
        }
        if self.status != Status::New {
            return Err(DomainError::AlreadyConnected);
        }
        Ok(vec![E::ConnectionAbandoned(ConnectionAbandoned {
            workspace: workspace.clone(),
            owner: owner.clone(),
            app: app.to_owned(),
            reason: reason.to_owned(),
        })])
    }

    /// The outcome of a connection test the adapter just made.
    pub(super) fn record_connection_test(
        &self,
        app: &App,
        context: &CommandContext,
        ok: &bool,
        latency_ms: &u64,
        answer: &str,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        let caps = &app.capabilities;
        self.authorize(context, Access::Manage)?;
        self.ensure_active()?;
        if !caps.test_connection {
            return Err(DomainError::Unsupported {
                app: app.name.to_owned(),
                capability: "connection tests",
            });
        }
        Ok(vec![E::ConnectionTested(ConnectionTested {
            ok: *ok,
            latency_ms: *latency_ms,
            answer: answer.to_owned(),
        })])
    }

    /// A token refresh (system only).
    pub(super) fn record_credentials_refresh(
        &self,
        context: &CommandContext,
        credential_ref: &CredentialRef,
        expires_at: &Option<Timestamp>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        self.ensure_active()?;
        Ok(vec![E::CredentialsRefreshed(CredentialsRefreshed {
            credential_ref: credential_ref.clone(),
            expires_at: *expires_at,
        })])
    }

    /// The provider refused the credentials (system only): work in flight stops, and the
    /// integration needs reauth. Idempotent.
    pub(super) fn mark_credentials_expired(
        &self,
        context: &CommandContext,
        reason: &ExpiryReason,
        detail: &str,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        if self.status == Status::NeedsReauth {
            return Ok(Vec::new());
        }
        self.ensure_active()?;
        let mut events =
            self.stop_work("needs_reauth", "the provider refused the credentials", true);
        events.push(E::CredentialsExpired(CredentialsExpired {
            reason: *reason,
            detail: detail.to_owned(),
        }));
        Ok(events)
    }

    /// New credentials from a reauth.
    pub(super) fn reauthenticate(
        &self,
        app: &App,
        context: &CommandContext,
        credential_ref: &CredentialRef,
        granted_scopes: &[String],
        expires_at: &Option<Timestamp>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        let caps = &app.capabilities;
        self.authorize(context, Access::Manage)?;
        self.ensure_not_ended()?;
        if !caps.reauth {
            return Err(DomainError::Unsupported {
                app: app.name.to_owned(),
                capability: "re-authentication",
            });
        }
        Ok(vec![E::Reauthenticated(Reauthenticated {
            credential_ref: credential_ref.clone(),
            granted_scopes: granted_scopes.to_vec(),
            expires_at: *expires_at,
        })])
    }

    /// Disconnect: work in flight stops, open actions fail.
    pub(super) fn disconnect(
        &self,
        context: &CommandContext,
        reason: &str,
        token_revoked: &bool,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::Manage)?;
        self.ensure_not_ended()?;
        Ok(self.disconnect_events(reason, *token_revoked))
    }

    /// Delete: disconnects first if connected; a disconnected integration is deleted as it is.
    pub(super) fn delete(
        &self,
        context: &CommandContext,
        secrets_shredded: &bool,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::Manage)?;
        let mut events = match self.status {
            Status::Connected | Status::NeedsReauth => self.disconnect_events("deleted", false),
            Status::Disconnected => Vec::new(),
            _ => return self.ensure_active().map(|()| Vec::new()),
        };
        events.push(E::Deleted(Deleted {
            secrets_shredded: *secrets_shredded,
        }));
        Ok(events)
    }

    pub(super) fn connect(
        &self,
        command: &ConnectIntegration,
        context: &CommandContext,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        let Caller::User(principal) = &context.caller else {
            return Err(DomainError::Forbidden(
                "an integration is connected by a user",
            ));
        };
        if self.status != Status::New {
            return Err(DomainError::AlreadyConnected);
        }
        let app = catalog::app(&command.app)
            .ok_or_else(|| DomainError::UnknownApp(command.app.clone()))?;
        if command.scope != app.scope {
            return Err(DomainError::ScopeMismatch {
                app: app.name.to_owned(),
                expected: app.scope.as_str(),
                requested: command.scope.as_str(),
            });
        }
        if !principal.role.can_write() {
            return Err(DomainError::Forbidden("auditors have read-only access"));
        }
        if app.scope == AppScope::Workspace && !principal.role.manages_workspace_integrations() {
            return Err(DomainError::Forbidden(
                "only admins and members with the integration permission connect workspace integrations",
            ));
        }
        for (name, value) in &command.setup {
            let invalid = |reason: String| DomainError::InvalidSetup {
                field: name.clone(),
                reason,
            };
            let field = app
                .setup_field(name)
                .ok_or_else(|| invalid(format!("{} has no such setup field", app.name)))?;
            if field.is_secret() {
                return Err(invalid(
                    "is a secret: it goes to the vault, never into the log".into(),
                ));
            }
            field.kind.validate(value).map_err(invalid)?;
        }
        if let Some(missing) = app.setup_fields.iter().find(|field| {
            field.required && !field.is_secret() && !command.setup.contains_key(field.name)
        }) {
            return Err(DomainError::InvalidSetup {
                field: missing.name.to_owned(),
                reason: "is required".into(),
            });
        }
        let scope = match app.scope {
            AppScope::Workspace => Scope::Workspace,
            AppScope::Personal => Scope::Personal {
                owner: principal.user.clone(),
            },
        };
        Ok(vec![IntegrationEvent::IntegrationConnected(
            IntegrationConnected {
                integration: command.integration,
                workspace: principal.workspace.clone(),
                app: app.id.to_owned(),
                scope,
                setup: command.setup.clone(),
                granted_scopes: command.granted_scopes.clone(),
                account_label: command.account_label.clone(),
                credential_ref: command.credential_ref.clone(),
                token_expires_at: command.token_expires_at,
            },
        )])
    }

    /// The events that stop everything in flight: the pending and running syncs fail with
    /// `code`, and open actions fail.
    pub(super) fn stop_work(
        &self,
        code: &str,
        message: &str,
        retryable: bool,
    ) -> Vec<IntegrationEvent> {
        let mut events = Vec::new();
        if let Some(running) = &self.running_sync {
            events.push(IntegrationEvent::SyncFailed(SyncFailed {
                sync_id: running.sync_id,
                code: code.to_owned(),
                message: message.to_owned(),
                retryable,
                totals: running.totals,
                detail: None,
            }));
        }
        if let Some(pending) = &self.pending_sync {
            events.push(IntegrationEvent::SyncFailed(SyncFailed {
                sync_id: pending.sync_id,
                code: code.to_owned(),
                message: message.to_owned(),
                retryable,
                totals: RecordCounts::default(),
                detail: None,
            }));
        }
        events
    }

    pub(super) fn disconnect_events(
        &self,
        reason: &str,
        token_revoked: bool,
    ) -> Vec<IntegrationEvent> {
        let mut events = self.stop_work("cancelled", "the integration was disconnected", false);
        for action_id in self.open_actions.keys() {
            events.push(IntegrationEvent::ActionFailed(ActionFailed {
                action_id: *action_id,
                error: "the integration was disconnected".into(),
                retryable: false,
            }));
        }
        events.push(IntegrationEvent::Disconnected(Disconnected {
            reason: reason.to_owned(),
            token_revoked,
        }));
        events
    }
}
