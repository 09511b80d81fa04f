//! The service's long-running tasks, run under [`supervise`](crate::supervise::supervise):
//! projections, the purge of deleted integrations, the checkpoint signer.

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
