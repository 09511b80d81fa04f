//! Rebuilding read models from position 0 without readers ever seeing a half-built one.
//!
//! A rebuild fills a fresh copy of each projection's tables (`installed_rebuild`, …) from the
//! whole log, in large batches, while the live tables go on serving and the live runner goes
//! on applying. When the copy has caught up with the head, one transaction swaps it in: it
//! locks the live checkpoint (the live runner waits), applies to the copy whatever the live
//! runner had applied beyond it, renames the live tables away and the copies into their
//! place, drops the old ones and moves the checkpoint. Readers see the old tables up to that
//! commit and the new ones after it. The live runner reads the checkpoint inside each of its
//! transactions, so it carries on from the swapped-in position with nothing applied twice.
//!
//! One rebuild runs at a time on a database: the copies have fixed names, so a second one
//! would drop or fill the first one's. Each holds a lease ([`REBUILD_LEASE`]) from before it
//! prepares its copies until its swap is done; another waits for it — `harmony projections
//! rebuild` run by hand while the service rebuilds after an upgrade, say.

use std::time::Duration;

use eventstore::EventStore;

use crate::db::lease::Leases;
use crate::db::{ServiceDb, ServiceDbError, Target, WriteTx};
use crate::installed;
use crate::projection::{Batch, Projection, RunError, MAX_BATCH};

/// How many events one transaction of a rebuild applies: larger than live batches, since
/// nobody waits for a rebuild's rows one by one.
pub const REBUILD_BATCH: usize = 5000;

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events read from the log.
    pub events: u64,
    /// The position the swapped-in tables have applied up to.
    pub position: u64,
}

/// The lease a rebuild holds on its database.
pub const REBUILD_LEASE: &str = "projections-rebuild";
/// How long the lease lasts unless renewed: a rebuild whose process died is followed by the
/// next one after this at most.
const REBUILD_LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a rebuild waiting for another looks again.
const REBUILD_WAIT_POLL: Duration = Duration::from_millis(250);

/// Rebuilds `projections` from position 0 and swaps them in, once no other rebuild runs on
/// `db`. `progress(position, head)` is called after each batch.
pub async fn rebuild(
    store: &dyn EventStore,
    db: &ServiceDb,
    projections: &[Projection],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Rebuilt, RunError> {
    let leases = Leases::new(db.clone(), Leases::process_holder());
    let mut told = false;
    while !leases.try_acquire(REBUILD_LEASE, REBUILD_LEASE_TTL).await? {
        if !told {
            tracing::info!("another rebuild is running on this database: waiting for it to end");
            told = true;
        }
        tokio::time::sleep(REBUILD_WAIT_POLL).await;
    }
    let held = async {
        loop {
            tokio::time::sleep(REBUILD_LEASE_TTL / 3).await;
            if !leases.try_acquire(REBUILD_LEASE, REBUILD_LEASE_TTL).await? {
                return Err(RunError::LeaseLost(
                    "another rebuild took the database over".into(),
                ));
            }
        }
    };
    let outcome = tokio::select! {
        rebuilt = fill_and_swap(store, db, projections, progress) => rebuilt,
        lost = held => lost,
    };
    if let Err(error) = leases.release(REBUILD_LEASE).await {
        tracing::warn!(%error, "could not release the rebuild's lease; it lapses by itself");
    }
    outcome
}

async fn fill_and_swap(
    store: &dyn EventStore,
    db: &ServiceDb,
    projections: &[Projection],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Rebuilt, RunError> {
    prepare(db, projections).await?;
    // Reading and decoding the next batch goes on while the database writes this one.
    let (batches, mut next) = tokio::sync::mpsc::channel::<(Batch<'static>, u64)>(2);
    let read = async move {
        let mut from = 1;
        loop {
            let head = store.head_position().await?;
            let events = store.read_all(from, REBUILD_BATCH).await?;
            let Some(last) = events.last() else {
                return Ok::<(), RunError>(());
            };
            from = last.position + 1;
            let batch = Batch::decode(events, projections)?;
            if batches.send((batch, head)).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut events = 0u64;
    let mut pending = installed::Pending::default();
    let apply = async {
        while let Some((batch, head)) = next.recv().await {
            let mut tx = db.begin_write().await?;
            for projection in projections {
                projection
                    .apply_holding(&mut tx, Target::Rebuild, &batch, Some(&mut pending))
                    .await?;
            }
            tx.commit().await?;
            events += batch.len() as u64;
            if let Some(last) = batch.last_position() {
                progress(last, head.max(last));
            }
        }
        Ok::<(), RunError>(())
    };
    futures::future::try_join(read, apply).await?;
    let mut tx = db.begin_write().await?;
    installed::flush(&mut tx, Target::Rebuild, &mut pending).await?;
    tx.commit().await?;
    let position = swap(store, db, projections).await?;
    Ok(Rebuilt { events, position })
}

/// Creates empty copies of the projections' tables, dropping what an interrupted rebuild left.
async fn prepare(db: &ServiceDb, projections: &[Projection]) -> Result<(), RunError> {
    let mut tx = db.begin_write().await?;
    for projection in projections {
        for table in projection.tables() {
            let copy = Target::Rebuild.table(table);
            tx.execute(&format!("DROP TABLE IF EXISTS {copy}")).await?;
            for statement in copy_ddl(&mut tx, table, &copy).await? {
                tx.execute(&statement).await?;
            }
        }
        tx.delete_checkpoint(&projection.checkpoint_name(Target::Rebuild))
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The statements that create an empty copy of `table` called `copy`, with the same columns,
/// keys and indexes.
async fn copy_ddl(
    tx: &mut WriteTx,
    table: &str,
    copy: &str,
) -> Result<Vec<String>, ServiceDbError> {
    match tx {
        WriteTx::Postgres(_) => Ok(vec![format!(
            "CREATE TABLE {copy} (LIKE {table} INCLUDING ALL)"
        )]),
        WriteTx::Sqlite(tx) => {
            // Tables first, then their indexes.
            let schema: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT type, name, sql FROM sqlite_master \
                 WHERE tbl_name = $1 AND sql IS NOT NULL ORDER BY type DESC",
            )
            .bind(table)
            .fetch_all(&mut **tx)
            .await?;
            let unreadable =
                || ServiceDbError::Invalid(format!("the schema of {table} is not one it can copy"));
            schema
                .into_iter()
                .map(|(kind, name, sql)| {
                    if kind == "table" {
                        let columns = sql.find('(').ok_or_else(unreadable)?;
                        Ok(format!("CREATE TABLE \"{copy}\" {}", &sql[columns..]))
                    } else {
                        // Index names are unique in the whole database: the copy's alternate
                        // between `name` and `name_r` from one rebuild to the next.
                        let renamed = name
                            .strip_suffix("_r")
                            .map_or_else(|| format!("{name}_r"), str::to_owned);
                        let on = sql.find(" ON ").ok_or_else(unreadable)?;
                        let columns = on + sql[on..].find('(').ok_or_else(unreadable)?;
                        let unique = if sql.starts_with("CREATE UNIQUE") {
                            "UNIQUE "
                        } else {
                            ""
                        };
                        Ok(format!(
                            "CREATE {unique}INDEX \"{renamed}\" ON \"{copy}\" {}",
                            &sql[columns..]
                        ))
                    }
                })
                .collect()
        }
    }
}

/// Swaps the filled copies in, in one transaction, after applying to them what the live
/// tables had beyond them. Returns the position they have applied up to.
async fn swap(
    store: &dyn EventStore,
    db: &ServiceDb,
    projections: &[Projection],
) -> Result<u64, RunError> {
    for projection in projections {
        crate::db::ensure_checkpoint(db, projection.name(), projection.version()).await?;
    }
    let mut tx = db.begin_write().await?;
    let mut position = 0;
    // Always in the same order as `Projection::ALL`, as the runners lock them.
    let in_order: Vec<Projection> = Projection::ALL
        .into_iter()
        .filter(|p| projections.contains(p))
        .collect();
    for projection in in_order {
        let live = tx.checkpoint(projection.name()).await?;
        let copy_name = projection.checkpoint_name(Target::Rebuild);
        let mut copied = tx.checkpoint(&copy_name).await?;
        while copied < live {
            let mut batch = store.read_all(copied + 1, MAX_BATCH).await?;
            batch.retain(|event| event.position <= live);
            let Some(last) = batch.last() else {
                break;
            };
            let last = last.position;
            projection
                .apply_in(
                    &mut tx,
                    Target::Rebuild,
                    &Batch::decode(&batch, &[projection])?,
                )
                .await?;
            copied = last;
        }
        for table in projection.tables() {
            let copy = Target::Rebuild.table(table);
            tx.execute(&format!("ALTER TABLE {table} RENAME TO {table}_replaced"))
                .await?;
            tx.execute(&format!("ALTER TABLE {copy} RENAME TO {table}"))
                .await?;
            tx.execute(&format!("DROP TABLE {table}_replaced")).await?;
        }
        let reached = copied.max(live);
        tx.save_checkpoint(projection.name(), reached).await?;
        tx.save_rebuilt(projection.name(), projection.version())
            .await?;
        tx.delete_checkpoint(&copy_name).await?;
        position = position.max(reached);
    }
    tx.commit().await?;
    Ok(position)
}
