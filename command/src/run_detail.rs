//! Auditing what an integration's runs recorded outside its stream: each run outcome that
//! commits to a detail head (`SyncCompleted` / `SyncFailed` schema 2) is checked against the
//! run-detail log — intact, aged out past the retention, or altered or missing (broken).

use std::time::Duration;

use domain::{IntegrationEvent, StreamName, SyncId};
use eventstore::{check_detail, DetailCheck, EventStore, RunDetailLog, StoreError};
use serde::Serialize;

/// What the runs of one integration stream recorded in the run-detail log, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunDetailReport {
    /// Run outcomes that commit to a detail head.
    pub runs: u64,
    /// Of those, whose detail is whole and ends at the committed head.
    pub intact: u64,
    /// Whose detail is gone (or partly gone) past the retention, as it should be.
    pub aged_out: u64,
    /// Whose detail is altered, or missing within the retention.
    pub broken: Vec<BrokenRun>,
}

impl RunDetailReport {
    pub fn holds(&self) -> bool {
        self.broken.is_empty()
    }
}

/// A run whose detail is not what its outcome committed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokenRun {
    pub sync_id: String,
    /// The version of the run's outcome in the integration's stream.
    pub outcome_version: u64,
    pub reason: String,
}

/// Checks every run of `stream` that committed to a detail head against `detail`, with
/// `retention` the time the run-detail log keeps detail.
pub async fn check_runs(
    store: &dyn EventStore,
    detail: &dyn RunDetailLog,
    stream: &StreamName,
    retention: Duration,
) -> Result<RunDetailReport, StoreError> {
    const PAGE: usize = 1000;
    let mut report = RunDetailReport::default();
    let mut from = 1;
    loop {
        let page = store.read_stream(stream, from, PAGE).await?;
        for event in &page {
            let (sync_id, head): (SyncId, _) = match event.decode::<IntegrationEvent>() {
                Ok(Some(IntegrationEvent::SyncCompleted(done))) => match done.detail {
                    Some(head) => (done.sync_id, head),
                    None => continue,
                },
                Ok(Some(IntegrationEvent::SyncFailed(failed))) => match failed.detail {
                    Some(head) => (failed.sync_id, head),
                    None => continue,
                },
                // The chain check reports what does not decode.
                _ => continue,
            };
            report.runs += 1;
            let check = check_detail(
                detail,
                sync_id,
                head.version,
                &head.hash,
                event.metadata.occurred_at,
                retention,
            )
            .await?;
            match check {
                DetailCheck::Intact { .. } => report.intact += 1,
                DetailCheck::AgedOut | DetailCheck::PartlyAgedOut { .. } => report.aged_out += 1,
                DetailCheck::Missing => report.broken.push(BrokenRun {
                    sync_id: sync_id.to_string(),
                    outcome_version: event.version,
                    reason: "run detail missing: gone within the retention".into(),
                }),
                DetailCheck::Altered { reason } => report.broken.push(BrokenRun {
                    sync_id: sync_id.to_string(),
                    outcome_version: event.version,
                    reason: format!("run detail altered: {reason}"),
                }),
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.version + 1,
            _ => return Ok(report),
        }
    }
}
