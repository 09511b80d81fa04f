//! The read database: SQLite by default, PostgreSQL for several processes.

use std::path::Path;
use std::str::FromStr;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// What can go wrong with the read database.
#[derive(Debug, thiserror::Error)]
pub enum ReadDbError {
    #[error("the read database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrating the read database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// A paging cursor this list never gave out.
    #[error("the cursor {0:?} is not one this list gave out")]
    BadCursor(String),
}

/// A pool on one of the two databases. Cheap to clone.
#[derive(Clone, Debug)]
pub enum ReadDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl ReadDb {
    /// Opens (creating it if needed) the SQLite database at `path`, in WAL mode, and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, ReadDbError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses nothing on a process crash; a power cut may lose the
            // last transactions, which the projection replays from the log.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let db = ReadDb::Sqlite(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to PostgreSQL at `url` and migrates it.
    pub async fn connect_postgres(url: &str) -> Result<Self, ReadDbError> {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let db = ReadDb::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Runs the migrations not yet applied. They are written in the SQL both databases
    /// share (`TEXT`, `BIGINT`, `ON CONFLICT`), so one set serves both.
    pub async fn migrate(&self) -> Result<(), ReadDbError> {
        let migrator = sqlx::migrate!("./migrations");
        match self {
            ReadDb::Sqlite(pool) => migrator.run(pool).await?,
            ReadDb::Postgres(pool) => migrator.run(pool).await?,
        }
        Ok(())
    }

    /// Closes every connection (and so, on PostgreSQL, ends the sessions holding leases).
    pub async fn close(&self) {
        match self {
            ReadDb::Sqlite(pool) => pool.close().await,
            ReadDb::Postgres(pool) => pool.close().await,
        }
    }

    /// "sqlite" or "postgres".
    pub fn kind(&self) -> &'static str {
        match self {
            ReadDb::Sqlite(_) => "sqlite",
            ReadDb::Postgres(_) => "postgres",
        }
    }
}

/// Which set of a projection's tables a write goes to: the ones readers see, or the fresh ones
/// a rebuild fills before swapping them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Live,
    Rebuild,
}

impl Target {
    /// The name of `table` in this set: `installed`, or `installed_rebuild`.
    pub fn table(self, table: &str) -> String {
        match self {
            Target::Live => table.to_owned(),
            Target::Rebuild => format!("{table}_rebuild"),
        }
    }
}

/// A write transaction on either database. Each projection's batch, its checkpoint and a
/// rebuild's swap are each one of these.
#[derive(Debug)]
pub enum WriteTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl ReadDb {
    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads before it writes never fails on another
    /// writer's commit in between.
    pub async fn begin_write(&self) -> Result<WriteTx, ReadDbError> {
        Ok(match self {
            ReadDb::Sqlite(pool) => WriteTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            ReadDb::Postgres(pool) => WriteTx::Postgres(pool.begin().await?),
        })
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), ReadDbError> {
        match self {
            WriteTx::Sqlite(tx) => tx.commit().await?,
            WriteTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Runs one statement without parameters or results (DDL).
    pub(crate) async fn execute(&mut self, sql: &str) -> Result<(), ReadDbError> {
        match self {
            WriteTx::Sqlite(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(drop)?,
            WriteTx::Postgres(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await.map(drop)?,
        };
        Ok(())
    }

    /// Where checkpoint `name` stands (0 before anything), locking it until the end of the
    /// transaction: whoever else writes the same projection waits, then sees the new value.
    pub(crate) async fn checkpoint(&mut self, name: &str) -> Result<u64, ReadDbError> {
        let position: Option<i64> = match self {
            // SQLite's write lock, taken at BEGIN, already serializes every writer.
            WriteTx::Sqlite(tx) => {
                sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?
            }
            WriteTx::Postgres(tx) => {
                sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE")
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?
            }
        };
        Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
    }

    /// Moves checkpoint `name` to `position`.
    pub(crate) async fn save_checkpoint(
        &mut self,
        name: &str,
        position: u64,
    ) -> Result<(), ReadDbError> {
        let sql = "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
                   ON CONFLICT (name) DO UPDATE SET position = excluded.position";
        let position = i64::try_from(position).unwrap_or(i64::MAX);
        match self {
            WriteTx::Sqlite(tx) => sqlx::query(sql)
                .bind(name)
                .bind(position)
                .execute(&mut **tx)
                .await
                .map(drop)?,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(name)
                .bind(position)
                .execute(&mut **tx)
                .await
                .map(drop)?,
        };
        Ok(())
    }

    /// Forgets checkpoint `name`.
    pub(crate) async fn delete_checkpoint(&mut self, name: &str) -> Result<(), ReadDbError> {
        let sql = "DELETE FROM checkpoints WHERE name = $1";
        match self {
            WriteTx::Sqlite(tx) => sqlx::query(sql)
                .bind(name)
                .execute(&mut **tx)
                .await
                .map(drop)?,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(name)
                .execute(&mut **tx)
                .await
                .map(drop)?,
        };
        Ok(())
    }
}

/// Makes sure checkpoint `name` has a row, so that every writer of the projection locks the
/// same one from its first batch on.
pub(crate) async fn ensure_checkpoint(db: &ReadDb, name: &str) -> Result<(), ReadDbError> {
    let sql =
        "INSERT INTO checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING";
    match db {
        ReadDb::Sqlite(pool) => sqlx::query(sql).bind(name).execute(pool).await.map(drop)?,
        ReadDb::Postgres(pool) => sqlx::query(sql).bind(name).execute(pool).await.map(drop)?,
    };
    Ok(())
}

/// The position projection `name` has applied up to, 0 before anything.
pub async fn checkpoint(db: &ReadDb, name: &str) -> Result<u64, ReadDbError> {
    let query = "SELECT position FROM checkpoints WHERE name = $1";
    let position: Option<i64> = match db {
        ReadDb::Sqlite(pool) => {
            sqlx::query_scalar(query)
                .bind(name)
                .fetch_optional(pool)
                .await?
        }
        ReadDb::Postgres(pool) => {
            sqlx::query_scalar(query)
                .bind(name)
                .fetch_optional(pool)
                .await?
        }
    };
    Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
}

/// A parameter of a query built at run time.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// Runs `sql` with `binds` ($1, $2, … in order) and reads every row as a `T`, on either
/// database.
pub(crate) async fn fetch_all<T>(
    db: &ReadDb,
    sql: &str,
    binds: &[Bind],
) -> Result<Vec<T>, ReadDbError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    macro_rules! run {
        ($pool:expr) => {{
            let mut query = sqlx::query_as::<_, T>(sql);
            for bind in binds {
                query = match bind {
                    Bind::Text(text) => query.bind(text.as_str()),
                    Bind::Int(n) => query.bind(*n),
                };
            }
            query.fetch_all($pool).await?
        }};
    }
    Ok(match db {
        ReadDb::Sqlite(pool) => run!(pool),
        ReadDb::Postgres(pool) => run!(pool),
    })
}
