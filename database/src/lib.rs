//! The service database of Harmony Sync: SQLite by default (a file under the data
//! directory, WAL), PostgreSQL for several processes. One migrator (`migrations/`) serves the
//! whole schema: what the service keeps and cannot derive — the vault's wrapped keys and
//! secrets, API tokens, console sessions, OAuth states, idempotency keys, leases, record hashes
//! and sync watermarks, the workers' checkpoints — and the read models' tables, which
//! `projections` fills and can always rebuild from the log. Here: the pool ([`ServiceDb`]), its
//! errors and which of them mean the database is away for a while, transactions with
//! checkpoints, the query helpers that run the same SQL on both databases, and [`lease`]:
//! work one process at a time may do.

pub mod lease;
#[cfg(feature = "test-support")]
pub mod test_support;

use std::path::Path;
use std::str::FromStr;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// What can go wrong with the service database.
#[derive(Debug, thiserror::Error)]
pub enum ServiceDbError {
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

impl ServiceDbError {
    /// Whether the database was away rather than the request wrong: the server restarting or
    /// unreachable, the pool out of connections, a transaction to retry. Worth trying again.
    pub fn is_transient(&self) -> bool {
        matches!(self, ServiceDbError::Sql(error) if is_transient(error))
    }
}

/// Whether `error` says the database was away for a while (see [`ServiceDbError::is_transient`]).
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE classes 08 (connection exception), 53 (insufficient resources), 57P
        // (the server shutting down or starting), and 40001/40P01 (serialization failure,
        // deadlock); SQLite's busy and locked.
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
                || code == "5"
                || code == "6"
                || code == "517"
        }),
        _ => false,
    }
}

/// Whether `error`, or anything that caused it, is the database away for a while.
pub fn caused_by_outage(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_transient)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A pool on the service database, SQLite or PostgreSQL: the read models, and what the service
/// keeps beside them (the vault, tokens, sessions, OAuth states, idempotency keys, leases).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub enum ServiceDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl ServiceDb {
    /// Opens (creating it if needed) the SQLite database at `path`, in WAL mode, and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, ServiceDbError> {
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
        let db = ServiceDb::Sqlite(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to PostgreSQL at `url` and migrates it.
    pub async fn connect_postgres(url: &str) -> Result<Self, ServiceDbError> {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let db = ServiceDb::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Connects to PostgreSQL at `url` with the read models in `schema` (created if missing)
    /// instead of the default one, and migrates them: a scratch space beside a live database.
    pub async fn connect_postgres_in_schema(
        url: &str,
        schema: &str,
    ) -> Result<Self, ServiceDbError> {
        if !schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ServiceDbError::Invalid(format!(
                "{schema:?} is not a schema name (letters, digits and _)"
            )));
        }
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.options([("search_path", schema)]))
            .await?;
        let db = ServiceDb::Postgres(pool);
        db.migrate().await?;
        Ok(db)
    }

    /// Drops the PostgreSQL schema this pool works in, with everything in it, and closes the
    /// pool; nothing on SQLite.
    pub async fn drop_schema(&self) -> Result<(), ServiceDbError> {
        if let ServiceDb::Postgres(pool) = self {
            let schema: String = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(pool)
                .await?;
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(pool)
                .await?;
            pool.close().await;
        }
        Ok(())
    }

    /// Runs the migrations not yet applied. They are written in the SQL both databases
    /// share (`TEXT`, `BIGINT`, `ON CONFLICT`), so one set serves both.
    pub async fn migrate(&self) -> Result<(), ServiceDbError> {
        let mut migrator = sqlx::migrate!("./migrations");
        // Migrations only add (tables, columns, indexes): during a rolling upgrade an older
        // process, restarting after a newer one migrated the database, runs on it as well.
        migrator.set_ignore_missing(true);
        match self {
            ServiceDb::Sqlite(pool) => migrator.run(pool).await?,
            ServiceDb::Postgres(pool) => migrator.run(pool).await?,
        }
        Ok(())
    }

    /// Closes every connection (and so, on PostgreSQL, ends the sessions holding leases).
    pub async fn close(&self) {
        match self {
            ServiceDb::Sqlite(pool) => pool.close().await,
            ServiceDb::Postgres(pool) => pool.close().await,
        }
    }

    /// "sqlite" or "postgres".
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceDb::Sqlite(_) => "sqlite",
            ServiceDb::Postgres(_) => "postgres",
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

impl ServiceDb {
    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads before it writes never fails on another
    /// writer's commit in between.
    pub async fn begin_write(&self) -> Result<WriteTx, ServiceDbError> {
        Ok(match self {
            ServiceDb::Sqlite(pool) => WriteTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            ServiceDb::Postgres(pool) => WriteTx::Postgres(pool.begin().await?),
        })
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), ServiceDbError> {
        match self {
            WriteTx::Sqlite(tx) => tx.commit().await?,
            WriteTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Runs one statement without parameters or results (DDL).
    pub async fn execute(&mut self, sql: &str) -> Result<(), ServiceDbError> {
        // A `&str` runs without parameters, unprepared (PostgreSQL's simple query protocol).
        use sqlx::Executor as _;
        match self {
            WriteTx::Sqlite(tx) => tx.execute(sql).await.map(drop)?,
            WriteTx::Postgres(tx) => tx.execute(sql).await.map(drop)?,
        };
        Ok(())
    }

    /// Where checkpoint `name` stands (0 before anything), locking it until the end of the
    /// transaction: whoever else writes the same projection waits, then sees the new value.
    pub async fn checkpoint(&mut self, name: &str) -> Result<u64, ServiceDbError> {
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
    pub async fn save_checkpoint(
        &mut self,
        name: &str,
        position: u64,
    ) -> Result<(), ServiceDbError> {
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

    /// Records that what lies before checkpoint `name` was just rebuilt, by `version`: a new
    /// generation.
    pub async fn save_rebuilt(&mut self, name: &str, version: u64) -> Result<(), ServiceDbError> {
        let sql =
            "UPDATE checkpoints SET version = $2, generation = generation + 1 WHERE name = $1";
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        match self {
            WriteTx::Sqlite(tx) => sqlx::query(sql)
                .bind(name)
                .bind(version)
                .execute(&mut **tx)
                .await
                .map(drop)?,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(name)
                .bind(version)
                .execute(&mut **tx)
                .await
                .map(drop)?,
        };
        Ok(())
    }

    /// Forgets checkpoint `name`.
    pub async fn delete_checkpoint(&mut self, name: &str) -> Result<(), ServiceDbError> {
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
/// same one from its first batch on. A checkpoint that has applied nothing yet is marked as
/// built by `version`: whatever writes its first rows is that code.
pub async fn ensure_checkpoint(
    db: &ServiceDb,
    name: &str,
    version: u64,
) -> Result<(), ServiceDbError> {
    let version = Bind::Int(i64::try_from(version).unwrap_or(i64::MAX));
    let name = Bind::Text(name.to_owned());
    execute(
        db,
        "INSERT INTO checkpoints (name, position, version) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO NOTHING",
        &[name.clone(), version.clone()],
    )
    .await?;
    execute(
        db,
        "UPDATE checkpoints SET version = $2 WHERE name = $1 AND position = 0 AND version < $2",
        &[name, version],
    )
    .await?;
    Ok(())
}

/// Where a projection's checkpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The last position applied.
    pub position: u64,
    /// The version of the code that built what lies before it.
    pub version: u64,
    /// How many rebuilds have been swapped in: a swap replaces rows without moving the
    /// position.
    pub generation: u64,
}

/// Where checkpoint `name` stands; `None` when it has no row.
pub async fn standing(db: &ServiceDb, name: &str) -> Result<Option<Standing>, ServiceDbError> {
    let rows: Vec<(i64, i64, i64)> = fetch_all(
        db,
        "SELECT position, version, generation FROM checkpoints WHERE name = $1",
        &[Bind::Text(name.to_owned())],
    )
    .await?;
    let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(rows
        .first()
        .map(|(position, version, generation)| Standing {
            position: unsigned(*position),
            version: unsigned(*version),
            generation: unsigned(*generation),
        }))
}

/// The position projection `name` has applied up to, 0 before anything.
pub async fn checkpoint(db: &ServiceDb, name: &str) -> Result<u64, ServiceDbError> {
    let query = "SELECT position FROM checkpoints WHERE name = $1";
    let position: Option<i64> = match db {
        ServiceDb::Sqlite(pool) => {
            sqlx::query_scalar(query)
                .bind(name)
                .fetch_optional(pool)
                .await?
        }
        ServiceDb::Postgres(pool) => {
            sqlx::query_scalar(query)
                .bind(name)
                .fetch_optional(pool)
                .await?
        }
    };
    Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
}

/// A row type that reads from either database.
pub trait EitherRow:
    for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
    + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
    + Send
    + Unpin
{
}

impl<T> EitherRow for T where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin
{
}

/// A parameter of a query built at run time.
#[derive(Clone, Debug)]
pub enum Bind {
    Text(String),
    Int(i64),
    MaybeText(Option<String>),
    MaybeInt(Option<i64>),
}

/// How many parameters one statement binds at most: within both databases' limits.
const MAX_BINDS: usize = 30_000;

/// Splits `len` items into chunks of at most `max` (rounded down to a power of two), the
/// remainder in ever smaller powers of two: a handful of statement shapes, each prepared once
/// and then taken from the connection's statement cache, whatever the batch sizes.
fn chunk_sizes(len: usize, max: usize) -> impl Iterator<Item = usize> {
    let largest = if max.is_power_of_two() {
        max
    } else {
        max.next_power_of_two() / 2
    }
    .max(1);
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let mut size = largest;
        while size > left {
            size /= 2;
        }
        left -= size;
        Some(size)
    })
}

/// Cuts `items` as [`chunk_sizes`] says.
fn chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut at = 0;
    chunk_sizes(items.len(), max).map(move |size| {
        let chunk = &items[at..at + size];
        at += size;
        chunk
    })
}

/// Builds on either database's query builder: pushes `bind` as a parameter.
macro_rules! push_bind {
    ($builder:expr, $bind:expr) => {
        match $bind {
            Bind::Text(text) => $builder.push_bind(text.clone()),
            Bind::Int(n) => $builder.push_bind(*n),
            Bind::MaybeText(text) => $builder.push_bind(text.clone()),
            Bind::MaybeInt(n) => $builder.push_bind(*n),
        }
    };
}

/// Runs `head` + `(key, key, …)` on either database, fetching `T`s or executing.
macro_rules! in_list {
    ($db:ty, $tx:expr, $head:expr, $chunk:expr, |$builder:ident| $finish:expr) => {{
        let mut $builder = sqlx::QueryBuilder::<$db>::new($head);
        $builder.push("(");
        let mut list = $builder.separated(", ");
        for key in $chunk {
            list.push_bind(key.clone());
        }
        $builder.push(")");
        $finish
    }};
}

/// Binds `binds` in order to a query of either database.
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.as_str()),
                Bind::Int(n) => query.bind(*n),
                Bind::MaybeText(text) => query.bind(text.as_deref()),
                Bind::MaybeInt(n) => query.bind(*n),
            };
        }
        query
    }};
}

impl WriteTx {
    /// Runs `head` followed by `(…), (…)` holding `rows`, then `tail` (an `ON CONFLICT …`
    /// clause, say): as few statements as the parameter limit allows.
    pub async fn insert_rows(
        &mut self,
        head: &str,
        tail: &str,
        rows: &[Vec<Bind>],
    ) -> Result<(), ServiceDbError> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(());
        };
        for chunk in chunks(rows, MAX_BINDS / width.max(1)) {
            macro_rules! run {
                ($db:ty, $tx:expr) => {{
                    let mut builder = sqlx::QueryBuilder::<$db>::new(head);
                    builder.push_values(chunk, |mut row, values| {
                        for value in values {
                            push_bind!(row, value);
                        }
                    });
                    builder.push(" ");
                    builder.push(tail);
                    builder.build().execute(&mut **$tx).await?;
                }};
            }
            match self {
                WriteTx::Sqlite(tx) => run!(sqlx::Sqlite, tx),
                WriteTx::Postgres(tx) => run!(sqlx::Postgres, tx),
            }
        }
        Ok(())
    }

    /// The rows `head` (a statement ending in `… IN `) selects for `keys`, in as few
    /// statements as the parameter limit allows.
    pub async fn fetch_in<T>(
        &mut self,
        head: &str,
        keys: &[String],
    ) -> Result<Vec<T>, ServiceDbError>
    where
        T: EitherRow,
    {
        let mut out = Vec::new();
        for chunk in chunks(keys, MAX_BINDS) {
            match self {
                WriteTx::Sqlite(tx) => in_list!(sqlx::Sqlite, tx, head, chunk, |builder| out
                    .extend(builder.build_query_as::<T>().fetch_all(&mut **tx).await?)),
                WriteTx::Postgres(tx) => in_list!(sqlx::Postgres, tx, head, chunk, |builder| out
                    .extend(builder.build_query_as::<T>().fetch_all(&mut **tx).await?)),
            }
        }
        Ok(out)
    }

    /// Runs `sql` with `binds` ($1, $2, … in order) inside the transaction and reads every
    /// row as a `T`.
    pub async fn fetch_all<T>(
        &mut self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<T>, ServiceDbError>
    where
        T: EitherRow,
    {
        Ok(match self {
            WriteTx::Sqlite(tx) => {
                bind_all!(sqlx::query_as::<_, T>(sql), binds)
                    .fetch_all(&mut **tx)
                    .await?
            }
            WriteTx::Postgres(tx) => {
                bind_all!(sqlx::query_as::<_, T>(sql), binds)
                    .fetch_all(&mut **tx)
                    .await?
            }
        })
    }

    /// Runs `head` (a statement ending in `… IN `) for `keys`.
    pub async fn execute_in(&mut self, head: &str, keys: &[String]) -> Result<(), ServiceDbError> {
        for chunk in chunks(keys, MAX_BINDS) {
            match self {
                WriteTx::Sqlite(tx) => in_list!(sqlx::Sqlite, tx, head, chunk, |builder| builder
                    .build()
                    .execute(&mut **tx)
                    .await
                    .map(drop)?),
                WriteTx::Postgres(tx) => {
                    in_list!(sqlx::Postgres, tx, head, chunk, |builder| builder
                        .build()
                        .execute(&mut **tx)
                        .await
                        .map(drop)?)
                }
            }
        }
        Ok(())
    }
}

/// The rows `head` (a statement ending in `… IN `) selects for `keys`, outside any
/// transaction: one round trip per chunk of keys.
pub async fn fetch_in<T>(
    db: &ServiceDb,
    head: &str,
    keys: &[String],
) -> Result<Vec<T>, ServiceDbError>
where
    T: EitherRow,
{
    let mut out = Vec::new();
    for chunk in chunks(keys, MAX_BINDS) {
        match db {
            ServiceDb::Sqlite(pool) => in_list!(sqlx::Sqlite, pool, head, chunk, |builder| out
                .extend(builder.build_query_as::<T>().fetch_all(pool).await?)),
            ServiceDb::Postgres(pool) => in_list!(sqlx::Postgres, pool, head, chunk, |builder| out
                .extend(builder.build_query_as::<T>().fetch_all(pool).await?)),
        }
    }
    Ok(out)
}

/// Runs `sql` with `binds` ($1, $2, … in order) and returns how many rows it changed.
pub async fn execute(db: &ServiceDb, sql: &str, binds: &[Bind]) -> Result<u64, ServiceDbError> {
    Ok(match db {
        ServiceDb::Sqlite(pool) => bind_all!(sqlx::query(sql), binds)
            .execute(pool)
            .await?
            .rows_affected(),
        ServiceDb::Postgres(pool) => bind_all!(sqlx::query(sql), binds)
            .execute(pool)
            .await?
            .rows_affected(),
    })
}

/// Runs `sql` with `binds` ($1, $2, … in order) and reads every row as a `T`, on either
/// database.
pub async fn fetch_all<T>(
    db: &ServiceDb,
    sql: &str,
    binds: &[Bind],
) -> Result<Vec<T>, ServiceDbError>
where
    T: EitherRow,
{
    macro_rules! run {
        ($pool:expr) => {{
            bind_all!(sqlx::query_as::<_, T>(sql), binds)
                .fetch_all($pool)
                .await?
        }};
    }
    Ok(match db {
        ServiceDb::Sqlite(pool) => run!(pool),
        ServiceDb::Postgres(pool) => run!(pool),
    })
}
