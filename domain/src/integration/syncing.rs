//! Deciding the commands of syncing: requesting, running and ending syncs, field mappings and
//! the schedule.

use super::*;
use IntegrationEvent as E;

/// Why a run failed, as its outcome says.
pub(super) struct Ended<'a> {
    pub(super) code: &'a str,
    pub(super) message: &'a str,
    pub(super) retryable: bool,
}

impl Integration {
    /// A sync asked for by a user (manual) or the scheduler (system). It joins the run already
    /// pending unless a worker has claimed that run (`claimed`: it may have read the provider
    /// past what prompted this request), in which case it is queued to follow it — once.
    pub(super) fn request_sync(
        &self,
        app: &App,
        context: &CommandContext,
        sync_id: &SyncId,
        kind: &SyncKind,
        claimed: bool,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        let caps = &app.capabilities;
        let trigger = match &context.caller {
            Caller::User(principal) => {
                self.authorize(context, Access::Manage)?;
                SyncTrigger::Manual {
                    user: principal.user.clone(),
                }
            }
            Caller::System { .. } => SyncTrigger::Schedule,
        };
        self.ensure_active()?;
        let supported = match kind {
            SyncKind::Full => caps.full_sync,
            SyncKind::Incremental => caps.incremental_sync,
        };
        if !supported {
            let capability = if *kind == SyncKind::Full {
                "full sync"
            } else {
                "incremental sync"
            };
            return Err(DomainError::Unsupported {
                app: app.name.to_owned(),
                capability,
            });
        }
        let reused = self
            .running_sync
            .as_ref()
            .is_some_and(|r| r.sync_id == *sync_id)
            || self
                .last_sync
                .as_ref()
                .is_some_and(|l| l.sync_id == *sync_id)
            || [&self.pending_sync, &self.queued_sync]
                .into_iter()
                .flatten()
                .any(|p| p.sync_id == *sync_id);
        if reused {
            return Err(DomainError::SyncIdReused(*sync_id));
        }
        // A run that has started (its `SyncStarted` is in the log) has its pending follow-up;
        // a pending one not yet claimed reads the provider after this request, so it covers it.
        let follow_up = match (&self.pending_sync, &self.queued_sync) {
            (None, _) => false,
            (Some(_), None) if claimed && self.running_sync.is_none() => true,
            (Some(_), _) => return Ok(Vec::new()),
        };
        Ok(vec![E::SyncRequested(SyncRequested {
            sync_id: *sync_id,
            kind: *kind,
            trigger,
            follow_up,
        })])
    }

    /// The worker starts the pending sync (system only).
    pub(super) fn start_sync(
        &self,
        context: &CommandContext,
        sync_id: &SyncId,
        cursor: &Option<String>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        self.ensure_active()?;
        if self.running_sync.is_some() {
            return Err(DomainError::SyncAlreadyRunning);
        }
        if self
            .pending_sync
            .as_ref()
            .is_none_or(|pending| pending.sync_id != *sync_id)
        {
            return Err(DomainError::SyncNotRequested(*sync_id));
        }
        Ok(vec![E::SyncStarted(SyncStarted {
            sync_id: *sync_id,
            cursor: cursor.clone(),
        })])
    }

    /// A page of the running sync applied (system only).
    pub(super) fn record_sync_progress(
        &self,
        context: &CommandContext,
        sync_id: &SyncId,
        object: &str,
        page: &u32,
        counts: &RecordCounts,
        cursor: &Option<String>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        self.running(*sync_id)?;
        Ok(vec![E::SyncProgressed(SyncProgressed {
            sync_id: *sync_id,
            object: object.to_owned(),
            page: *page,
            counts: *counts,
            cursor: cursor.clone(),
        })])
    }

    /// The running sync finished, or the pending one that never needed to start: it found
    /// nothing to record (system only).
    pub(super) fn complete_sync(
        &self,
        context: &CommandContext,
        sync_id: &SyncId,
        duration_ms: &u64,
        unrecorded: &RecordCounts,
        detail: &Option<RunDetailHead>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        let mut totals = self.run_totals(*sync_id)?;
        totals.add(unrecorded);
        Ok(vec![E::SyncCompleted(SyncCompleted {
            sync_id: *sync_id,
            totals,
            duration_ms: *duration_ms,
            detail: detail.clone(),
        })])
    }

    /// The running or pending sync failed (system only).
    pub(super) fn fail_sync(
        &self,
        context: &CommandContext,
        sync_id: &SyncId,
        ended: Ended<'_>,
        unrecorded: &RecordCounts,
        detail: &Option<RunDetailHead>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::System)?;
        let mut totals = self.run_totals(*sync_id)?;
        totals.add(unrecorded);
        Ok(vec![E::SyncFailed(SyncFailed {
            sync_id: *sync_id,
            code: ended.code.to_owned(),
            message: ended.message.to_owned(),
            retryable: ended.retryable,
            totals,
            detail: detail.clone(),
        })])
    }

    /// What run `sync_id` has recorded so far: a running run's totals, nothing for a pending
    /// one (claimed by a worker's lease, it appends `SyncStarted` only with its first
    /// recorded page).
    fn run_totals(&self, sync_id: SyncId) -> Result<RecordCounts, DomainError> {
        match (&self.running_sync, &self.pending_sync) {
            (Some(running), _) if running.sync_id == sync_id => Ok(running.totals),
            (_, Some(pending)) if pending.sync_id == sync_id => Ok(RecordCounts::default()),
            _ => Err(DomainError::SyncNotRunning(sync_id)),
        }
    }

    /// An object's field mapping replaced, checked against the app's (or the provider's
    /// discovered) fields.
    pub(super) fn change_mapping(
        &self,
        app: &App,
        context: &CommandContext,
        object: &str,
        fields: &[FieldMapping],
        discovered_fields: &Option<Vec<String>>,
        expected_version: &Option<u32>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        self.authorize(context, Access::Manage)?;
        self.ensure_not_ended()?;
        if let Some(expected) = *expected_version {
            if expected != self.mapping_version {
                return Err(DomainError::MappingVersionMismatch {
                    expected,
                    current: self.mapping_version,
                });
            }
        }
        self.mapping_events(app, object, fields, discovered_fields.as_deref())
    }

    /// Incremental sync every so many minutes, or off.
    pub(super) fn change_sync_schedule(
        &self,
        app: &App,
        context: &CommandContext,
        every_minutes: &Option<u32>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        let caps = &app.capabilities;
        self.authorize(context, Access::Manage)?;
        self.ensure_not_ended()?;
        if !caps.incremental_sync {
            return Err(DomainError::Unsupported {
                app: app.name.to_owned(),
                capability: "scheduled sync",
            });
        }
        if let Some(minutes) = every_minutes {
            if !SCHEDULE_MINUTES.contains(minutes) {
                return Err(DomainError::InvalidSchedule {
                    min: *SCHEDULE_MINUTES.start(),
                    max: *SCHEDULE_MINUTES.end(),
                    got: *minutes,
                });
            }
        }
        if self.schedule_minutes == *every_minutes {
            return Ok(Vec::new());
        }
        Ok(vec![E::SyncScheduleChanged(SyncScheduleChanged {
            every_minutes: *every_minutes,
        })])
    }

    pub(super) fn mapping_events(
        &self,
        app: &App,
        object: &str,
        fields: &[FieldMapping],
        discovered_fields: Option<&[String]>,
    ) -> Result<Vec<IntegrationEvent>, DomainError> {
        if app.capabilities.mappings.is_empty() {
            return Err(DomainError::Unsupported {
                app: app.name.to_owned(),
                capability: "field mappings",
            });
        }
        let mappable = app
            .mappable_object(object)
            .ok_or_else(|| DomainError::UnknownObject {
                app: app.name.to_owned(),
                object: object.to_owned(),
            })?;
        if fields.is_empty() {
            return Err(DomainError::InvalidMapping {
                field: object.to_owned(),
                reason: "maps no field".into(),
            });
        }
        let provider_has = |field: &str| match discovered_fields {
            Some(discovered) => discovered.iter().any(|f| f == field),
            None => mappable.provider_fields.contains(&field),
        };
        let mut targets = BTreeSet::new();
        for pair in fields {
            if !provider_has(&pair.provider_field) {
                return Err(DomainError::InvalidMapping {
                    field: pair.provider_field.clone(),
                    reason: format!("{} has no such field on {object}", app.name),
                });
            }
            if !mappable
                .harmony_fields
                .contains(&pair.harmony_field.as_str())
            {
                return Err(DomainError::InvalidMapping {
                    field: pair.harmony_field.clone(),
                    reason: format!(
                        "is not a field of Harmony's {} (expected one of {})",
                        mappable.harmony_object,
                        mappable.harmony_fields.join(", ")
                    ),
                });
            }
            if !targets.insert(pair.harmony_field.as_str()) {
                return Err(DomainError::InvalidMapping {
                    field: pair.harmony_field.clone(),
                    reason: "is mapped twice".into(),
                });
            }
        }
        if self
            .mappings
            .get(object)
            .is_some_and(|current| current.fields == fields)
        {
            return Ok(Vec::new());
        }
        Ok(vec![IntegrationEvent::MappingChanged(MappingChanged {
            object: object.to_owned(),
            version: self.mapping_version + 1,
            fields: fields.to_vec(),
        })])
    }
}
