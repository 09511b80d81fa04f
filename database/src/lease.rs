//! Leases in the service's database: work that one process at a time may do — a sync run of
//! one integration, a token refresh, the scheduler's tick — is done by whoever holds its lease.
//! A lease lapses at its expiry unless its holder renews it, so a crashed holder's work is taken
//! over after at most one lease period.
//!
//! One statement takes a lease: insert the row, or take it over if it has lapsed or is already
//! ours. Both SQLite and PostgreSQL run it atomically, so two processes never both win.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{execute, fetch_all, Bind, ServiceDb, ServiceDbError};

/// One process's view of the lease table.
#[derive(Clone, Debug)]
pub struct Leases {
    db: ServiceDb,
    holder: String,
    clock: Clock,
}

/// Where leases read the time: the system's clock, or one moved by hand (for tests, which
/// then see a lease lapse without waiting for it).
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// Milliseconds since the Unix epoch, as [`Clock::advance`] leaves them.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A clock that stands at the system's time now until it is advanced.
    pub fn manual() -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(system_millis())))
    }

    /// Moves a manual clock forward; the system's clock moves by itself.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(millis) = self {
            millis.fetch_add(
                i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
                Ordering::SeqCst,
            );
        }
    }

    /// Milliseconds since the Unix epoch, as lease times are kept.
    fn now_millis(&self) -> i64 {
        match self {
            Clock::System => system_millis(),
            Clock::Manual(millis) => millis.load(Ordering::SeqCst),
        }
    }
}

fn system_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

impl Leases {
    /// `holder` names this process (unique per process, e.g. host, pid and a random part).
    pub fn new(db: ServiceDb, holder: impl Into<String>) -> Self {
        Self {
            db,
            holder: holder.into(),
            clock: Clock::System,
        }
    }

    /// The same leases, reading the time from `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// A holder name unique to this process.
    pub fn process_holder() -> String {
        format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple())
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes (or renews) lease `name` for `ttl`; false when another holder has it.
    pub async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<bool, ServiceDbError> {
        let now = self.clock.now_millis();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let taken = execute(
            &self.db,
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            &[
                Bind::Text(name.to_owned()),
                Bind::Text(self.holder.clone()),
                Bind::Int(expires),
                Bind::Int(now),
            ],
        )
        .await?;
        Ok(taken == 1)
    }

    /// Gives lease `name` up if this process holds it.
    pub async fn release(&self, name: &str) -> Result<(), ServiceDbError> {
        execute(
            &self.db,
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[Bind::Text(name.to_owned()), Bind::Text(self.holder.clone())],
        )
        .await
        .map(drop)
    }

    /// Who holds lease `name` now, if anyone does.
    pub async fn holder_of(&self, name: &str) -> Result<Option<String>, ServiceDbError> {
        let rows: Vec<(String,)> = fetch_all(
            &self.db,
            "SELECT holder FROM leases WHERE name = $1 AND expires_at >= $2",
            &[
                Bind::Text(name.to_owned()),
                Bind::Int(self.clock.now_millis()),
            ],
        )
        .await?;
        Ok(rows.into_iter().next().map(|(holder,)| holder))
    }
}
