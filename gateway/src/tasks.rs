//! The service's long-running tasks, run under [`supervise`](crate::supervise::supervise):
//! projections, the purge of deleted integrations, the checkpoint signer, and the ageing out of
//! sync-run detail past its retention.

use std::sync::Arc;
use tracing::Instrument;

use eventstore::{EventStore, RecordLog};

use crate::state::{AppState, Runners};
use crate::supervise::supervise;

/// Signs the heads of the streams that changed, every `every`, in one process at a time.
pub(crate) async fn sign_checkpoints(state: AppState, every: std::time::Duration) {
    let leases =
        database::lease::Leases::new(state.db.clone(), database::lease::Leases::process_holder());
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match leases.try_acquire("checkpoints", every * 3).await {
            Ok(true) => match command::checkpoints::sign_new(
                state.store.as_ref(),
                state.checkpoints.log.as_ref(),
                &state.checkpoints.key,
            )
            .await
            {
                Ok(0) => {}
                Ok(signed) => tracing::debug!(signed, "signed stream heads"),
                Err(error) => tracing::warn!(%error, "could not sign checkpoints; will retry"),
            },
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot take the checkpoint lease"),
        }
    }
}

/// How often run detail past its retention is looked for.
const AGE_OUT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Ages sync-run detail out, at start and then hourly, in one process at a time: the runs of
/// the run-detail log whose last detail is older than `retention` (on JetStream the stream's
/// `max_age` does it), and the sync logs' page rows and rows of runs that changed nothing
/// that ended before it. Never the event log: a run's request and outcome stay for ever.
pub(crate) async fn age_out_run_detail(state: AppState, retention: std::time::Duration) {
    let leases =
        database::lease::Leases::new(state.db.clone(), database::lease::Leases::process_holder());
    let mut tick = tokio::time::interval(AGE_OUT_EVERY);
    loop {
        tick.tick().await;
        match leases
            .try_acquire("run-detail-age-out", AGE_OUT_EVERY)
            .await
        {
            Ok(true) => match age_out_once(state.detail.as_ref(), &state.db, retention).await {
                Ok((0, 0)) => {}
                Ok((runs, rows)) => {
                    tracing::info!(runs, rows, "aged out sync-run detail past its retention")
                }
                Err(error) => tracing::warn!(%error, "could not age out run detail; will retry"),
            },
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot take the run-detail lease"),
        }
    }
}

/// One pass of [`age_out_run_detail`]: how many runs left the run-detail log, and how many
/// sync-log rows (runs and pages) went.
pub(crate) async fn age_out_once(
    detail: &dyn eventstore::RunDetailLog,
    db: &database::ServiceDb,
    retention: std::time::Duration,
) -> anyhow::Result<(u64, u64)> {
    let cutoff = domain::Timestamp::now().minus(retention);
    let runs = detail.expire(cutoff).await?;
    let rows = projections::sync_runs::forget_detail_before(db, cutoff).await?;
    Ok((runs, rows))
}

/// Keeps the records log free of deleted integrations' records, and the vault free of their
/// secrets, for as long as the service runs.
pub(crate) fn purge_records_of_deleted_integrations(
    store: Arc<dyn EventStore>,
    records: Arc<dyn RecordLog>,
    vault: Arc<adapters::vault::Vault>,
) -> tokio::task::JoinHandle<()> {
    supervise("purging deleted integrations", move || {
        let (store, records, vault) = (store.clone(), records.clone(), vault.clone());
        let shred = move |integration| {
            let vault = vault.clone();
            async move {
                vault.shred(integration).await.map(drop).map_err(|error| {
                    eventstore::StoreError::unavailable_from("shredding the vault", error)
                })
            }
        };
        eventstore::purge_deleted_integrations(store, records, shred)
    })
}

/// Keeps one read model up to date while the service runs — on PostgreSQL only while this
/// process holds its lease, waiting otherwise. An event it cannot apply stops that projection
/// (the others go on) with an error naming the position; anything else (the log or the
/// database away for a while, the lease lost) is retried.
pub(crate) fn run_projection(
    projection: projections::runner::Projection,
    store: Arc<dyn EventStore>,
    read: database::ServiceDb,
    runners: Runners,
) -> tokio::task::JoinHandle<()> {
    use projections::installed::ApplyError;
    use projections::runner::{RunError, RunnerState};
    supervise(projection.name(), move || {
        let (store, read, runners) = (store.clone(), read.clone(), runners.clone());
        async move {
            let on_state = |state: RunnerState| {
                if let Ok(mut runners) = runners.lock() {
                    runners.insert(projection.name(), state);
                }
            };
            match projections::runner::run_leased(projection, store, read, &on_state).await {
                Err(RunError::Apply(error @ ApplyError::Undecodable { .. })) => {
                    on_state(RunnerState::Stopped);
                    tracing::error!(projection = projection.name(), %error, "projection stopped");
                    Ok(())
                }
                other => other,
            }
        }
        .instrument(tracing::info_span!(
            "projection",
            projection = projection.name()
        ))
    })
}
