//! The projections and what applying the log to one means: a batch of events decoded once,
//! applied to a projection's tables with its checkpoint in one transaction.

use std::borrow::Cow;

use domain::IntegrationEvent;
use eventstore::{RecordedEvent, StoreError};

use crate::db::{ServiceDb, Target, WriteTx};
use crate::installed::{self, ApplyError};
use crate::sync_runs;

/// How many events one transaction applies at most.
pub const MAX_BATCH: usize = 1000;

/// A batch of the log, each integration event decoded once for every projection that
/// applies it.
#[derive(Debug)]
pub struct Batch<'a> {
    events: Cow<'a, [RecordedEvent]>,
    /// Beside each event: its decoded form, `None` for other streams' events and types the
    /// domain does not know.
    decoded: Vec<Option<IntegrationEvent>>,
}

impl<'a> Batch<'a> {
    /// Decodes for `projections` the events (in log order; a slice, or a `Vec` for a batch of
    /// its own) that any of them reads. One of those that cannot be decoded is an error naming
    /// its position; one only other projections read is left alone.
    pub fn decode(
        events: impl Into<Cow<'a, [RecordedEvent]>>,
        projections: &[Projection],
    ) -> Result<Self, ApplyError> {
        let events = events.into();
        let decoded = events
            .iter()
            .map(|event| {
                if event.stream.integration_id().is_none()
                    || !projections.iter().any(|p| p.reads(&event.event_type))
                {
                    return Ok(None);
                }
                let decoded = event.decode::<IntegrationEvent>().map_err(|error| {
                    ApplyError::Undecodable {
                        position: event.position,
                        reason: error.to_string(),
                    }
                })?;
                if decoded.is_none() {
                    tracing::debug!(
                        position = event.position,
                        event_type = %event.event_type,
                        "passing over an event type the domain does not know"
                    );
                }
                Ok(decoded)
            })
            .collect::<Result<_, ApplyError>>()?;
        Ok(Batch { events, decoded })
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events after `position`, each with its decoded form.
    pub(crate) fn after(
        &self,
        position: u64,
    ) -> impl Iterator<Item = (&RecordedEvent, Option<&IntegrationEvent>)> + Clone + '_ {
        let skip = self
            .events
            .partition_point(|event| event.position <= position);
        self.events[skip..]
            .iter()
            .zip(self.decoded[skip..].iter().map(Option::as_ref))
    }

    /// The last event's position.
    pub fn last_position(&self) -> Option<u64> {
        self.events.last().map(|event| event.position)
    }
}

/// The read models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    Installed,
    SyncRuns,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Installed, Projection::SyncRuns];

    /// The name its checkpoint is stored under, and `harmony projections rebuild --name` takes.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Installed => installed::NAME,
            Projection::SyncRuns => sync_runs::NAME,
        }
    }

    /// The version of its code: raised by a release that changes what it makes of events it
    /// has already applied, so that tables an older version built are rebuilt.
    pub fn version(self) -> u64 {
        match self {
            Projection::Installed => installed::VERSION,
            Projection::SyncRuns => sync_runs::VERSION,
        }
    }

    /// The projection called `name`.
    pub fn named(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether it reads events of `event_type` (of an integration's stream).
    pub fn reads(self, event_type: &str) -> bool {
        match self {
            Projection::Installed => true,
            Projection::SyncRuns => {
                use domain::IntegrationEventKind as Kind;
                matches!(
                    Kind::of(event_type),
                    Some(
                        Kind::SyncRequested
                            | Kind::SyncStarted
                            | Kind::SyncProgressed
                            | Kind::SyncCompleted
                            | Kind::SyncFailed
                            | Kind::SyncScheduleChanged
                    )
                )
            }
        }
    }

    /// The tables it owns.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Installed => &[installed::TABLE],
            Projection::SyncRuns => &[sync_runs::RUNS, sync_runs::PAGES],
        }
    }

    /// The name of its checkpoint for `target`'s tables.
    pub(crate) fn checkpoint_name(self, target: Target) -> String {
        target.table(self.name())
    }

    /// Applies to `target`'s tables, inside `tx`, those of the batch's events past the
    /// checkpoint, and moves the checkpoint to the last of them. The checkpoint is read and
    /// locked in the same transaction, so whoever else writes the projection (a second
    /// process, a rebuild's swap) can never make an event count twice. Returns how many
    /// events were past it.
    pub async fn apply_in(
        self,
        tx: &mut WriteTx,
        target: Target,
        batch: &Batch<'_>,
    ) -> Result<usize, ApplyError> {
        self.apply_holding(tx, target, batch, None).await
    }

    /// [`Projection::apply_in`], Installed's rows held in `pending` (a rebuild's) rather
    /// than written at once.
    pub(crate) async fn apply_holding(
        self,
        tx: &mut WriteTx,
        target: Target,
        batch: &Batch<'_>,
        pending: Option<&mut installed::Pending>,
    ) -> Result<usize, ApplyError> {
        let name = self.checkpoint_name(target);
        let checkpoint = tx.checkpoint(&name).await?;
        let fresh = batch.after(checkpoint);
        let Some(last) = batch.last_position().filter(|last| *last > checkpoint) else {
            return Ok(0);
        };
        let count = fresh.clone().count();
        match self {
            Projection::Installed => installed::apply_in(tx, target, fresh, pending).await?,
            Projection::SyncRuns => sync_runs::apply_in(tx, target, fresh).await?,
        }
        tx.save_checkpoint(&name, last).await?;
        Ok(count)
    }

    /// Applies `events` (in log order) and moves the checkpoint, in one transaction.
    ///
    /// An event that cannot be decoded stops it there: what comes before is applied, and the
    /// error names the event's position.
    pub async fn apply(self, db: &ServiceDb, events: &[RecordedEvent]) -> Result<(), ApplyError> {
        let batch = match Batch::decode(events, &[self]) {
            Ok(batch) => batch,
            Err(ApplyError::Undecodable { position, reason }) => {
                let before = events.partition_point(|event| event.position < position);
                Box::pin(self.apply(db, &events[..before])).await?;
                return Err(ApplyError::Undecodable { position, reason });
            }
            Err(error) => return Err(error),
        };
        let mut tx = db.begin_write().await?;
        self.apply_in(&mut tx, Target::Live, &batch).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where it is in the log.
    pub async fn checkpoint(self, db: &ServiceDb) -> Result<u64, crate::ServiceDbError> {
        crate::db::checkpoint(db, self.name()).await
    }

    /// Where it is in the log, and which rebuild of its tables is in place: an answer drawn
    /// from them stays right while both stand.
    pub async fn stamp(self, db: &ServiceDb) -> Result<(u64, u64), crate::ServiceDbError> {
        Ok(crate::db::standing(db, self.name())
            .await?
            .map_or((0, 0), |standing| (standing.position, standing.generation)))
    }
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the log: {0}")]
    Log(#[from] StoreError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Db(#[from] crate::db::ServiceDbError),
    #[error("the projection's lease was lost: {0}")]
    LeaseLost(String),
}
