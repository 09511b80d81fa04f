//! Leases in the service's database: work that one process at a time may do — a sync run of
//! one integration, a token refresh, the scheduler's tick — is done by whoever holds its lease.
//! A lease lapses at its expiry unless its holder renews it, so a crashed holder's work is taken
//! over after at most one lease period.
//!
//! One statement takes a lease: insert the row, or take it over if it has lapsed or is already
//! ours. Both SQLite and PostgreSQL run it atomically, so two processes never both win.

use std::time::Duration;

use database::{ReadDb, ReadDbError};

/// One process's view of the lease table.
#[derive(Clone, Debug)]
pub struct Leases {
    db: ReadDb,
    holder: String,
}

fn now_millis() -> i64 {
    crate::providers::now_millis()
}

impl Leases {
    /// `holder` names this process (unique per process, e.g. host, pid and a random part).
    pub fn new(db: ReadDb, holder: impl Into<String>) -> Self {
        Self {
            db,
            holder: holder.into(),
        }
    }

    /// A holder name unique to this process.
    pub fn process_holder() -> String {
        format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple())
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes (or renews) lease `name` for `ttl`; false when another holder has it.
    pub async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<bool, ReadDbError> {
        let now = now_millis();
        let expires = now + ttl.as_millis() as i64;
        let sql = "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                   expires_at = excluded.expires_at \
                   WHERE leases.holder = excluded.holder OR leases.expires_at < $4";
        let taken = on_db!(&self.db, |pool| sqlx::query(sql)
            .bind(name)
            .bind(&self.holder)
            .bind(expires)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(taken == 1)
    }

    /// Gives lease `name` up if this process holds it.
    pub async fn release(&self, name: &str) -> Result<(), ReadDbError> {
        let sql = "DELETE FROM leases WHERE name = $1 AND holder = $2";
        on_db!(&self.db, |pool| sqlx::query(sql)
            .bind(name)
            .bind(&self.holder)
            .execute(pool)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Who holds lease `name` now, if anyone does.
    pub async fn holder_of(&self, name: &str) -> Result<Option<String>, ReadDbError> {
        let sql = "SELECT holder FROM leases WHERE name = $1 AND expires_at >= $2";
        let holder: Option<String> = on_db!(&self.db, |pool| sqlx::query_scalar(sql)
            .bind(name)
            .bind(now_millis())
            .fetch_optional(pool)
            .await?);
        Ok(holder)
    }
}
