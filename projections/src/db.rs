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

    /// "sqlite" or "postgres".
    pub fn kind(&self) -> &'static str {
        match self {
            ReadDb::Sqlite(_) => "sqlite",
            ReadDb::Postgres(_) => "postgres",
        }
    }
}

/// Moves projection `name`'s checkpoint to `position`, inside the caller's transaction (a
/// macro, so that the one statement serves both databases' transactions).
macro_rules! save_checkpoint {
    ($tx:expr, $name:expr, $position:expr) => {
        sqlx::query(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind($name)
        .bind($position)
        .execute($tx)
        .await
    };
}
pub(crate) use save_checkpoint;

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
