//! `harmony bench projections`: rebuilding the read models from a large, realistic log, beside
//! a raw bulk insert of the same final rows, and the latency of the Installed and sync-logs
//! queries.
//!
//! The log: integrations spread over workspaces — half HubSpot for the workspace, half Gmail
//! or Google Calendar of one of the workspace's users — each connected, tested, given a sync
//! schedule (HubSpot also a mapping), every other one losing its credentials and
//! reauthenticated half-way, and synced again and again (each sync requested, started, ten
//! pages, completed; one in seven failing) until it has its share of the events. The log is
//! written a sync at a time round-robin over the integrations, so a batch of the log mixes
//! hundreds of them, as a real one does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{machine, Figure, Report};
use domain::catalog::AppScope;
use domain::integration::{ConnectIntegration, ExpiryReason, FieldMapping, RecordCounts, SyncKind};
use domain::{
    Aggregate, Caller, CommandContext, CredentialRef, Integration, IntegrationCommand,
    IntegrationId, Principal, Role, StreamName, SyncId, Timestamp,
};
use eventstore::{EventStore, ExpectedVersion, NewEvent};
use futures::StreamExt;
use rand::{Rng, SeedableRng};

use projections::db::ServiceDb;
use projections::runner::Projection;
use projections::{installed, sync_runs};

/// How much work the suite does.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub integrations: usize,
    pub workspaces: usize,
    /// Events each integration has, about (its last sync may pass it).
    pub events_per_integration: usize,
    /// Queries of each kind timed.
    pub queries: usize,
}

impl Sizes {
    /// 10,000 integrations across 100 workspaces, 1,000,000 events.
    pub const FULL: Sizes = Sizes {
        integrations: 10_000,
        workspaces: 100,
        events_per_integration: 100,
        queries: 2_000,
    };
    /// A smoke test, not figures.
    pub const QUICK: Sizes = Sizes {
        integrations: 200,
        workspaces: 10,
        events_per_integration: 100,
        queries: 200,
    };
}

/// Ten pages a sync, as the suite's syncs pull.
const PAGES: u32 = 10;

/// How many appends are in flight while the log is written.
const WRITERS: usize = 64;

/// One integration of the generated log.
struct Generated {
    id: IntegrationId,
    workspace: String,
    /// The user who acts for it: its owner when personal, else the workspace's admin.
    user: String,
    state: Integration,
    version: u64,
    events: usize,
    syncs: u32,
}

fn user_context(workspace: &str, user: &str, at: Timestamp) -> CommandContext {
    CommandContext::new(
        Caller::User(Principal {
            user: user.parse().expect("generated user ids are valid"),
            workspace: workspace
                .parse()
                .expect("generated workspace ids are valid"),
            role: Role::Admin,
        }),
        at,
    )
}

impl Generated {
    /// Decides `commands` in turn on the integration's state, as the service would.
    fn decide(
        &mut self,
        commands: Vec<(IntegrationCommand, CommandContext)>,
    ) -> Result<Vec<NewEvent>, domain::DomainError> {
        let mut out = Vec::new();
        for (command, context) in commands {
            let metadata = self.state.metadata_for(&command, &context);
            for event in self.state.handle(&command, &context)? {
                out.push(NewEvent::from_domain(&event, metadata.clone()));
                self.state.apply(&event, &metadata);
            }
        }
        self.events += out.len();
        Ok(out)
    }

    /// The integration's first events: connected, tested, scheduled (and mapped).
    fn connect(&mut self, n: usize, at: Timestamp) -> Result<Vec<NewEvent>, domain::DomainError> {
        let ctx = user_context(&self.workspace, &self.user, at);
        let (app, scope) = match n % 4 {
            0 | 1 => ("hubspot", AppScope::Workspace),
            2 => ("gmail", AppScope::Personal),
            _ => ("google-calendar", AppScope::Personal),
        };
        let mut commands = vec![
            (
                IntegrationCommand::Connect(ConnectIntegration {
                    integration: self.id,
                    app: app.into(),
                    scope,
                    setup: Default::default(),
                    granted_scopes: vec!["read".into()],
                    account_label: Some(format!("account {n}")),
                    credential_ref: CredentialRef(format!("vault:{}:1", self.id)),
                    token_expires_at: None,
                }),
                ctx.clone(),
            ),
            (
                IntegrationCommand::RecordConnectionTest {
                    ok: true,
                    latency_ms: 120,
                    answer: "ok".into(),
                },
                ctx.clone(),
            ),
            (
                IntegrationCommand::ChangeSyncSchedule {
                    every_minutes: Some(60),
                },
                ctx.clone(),
            ),
        ];
        if app == "hubspot" {
            commands.push((
                IntegrationCommand::ChangeMapping {
                    object: "companies".into(),
                    fields: vec![FieldMapping {
                        provider_field: "domain".into(),
                        harmony_field: "domain".into(),
                        transform: None,
                    }],
                    discovered_fields: None,
                    expected_version: None,
                },
                ctx,
            ));
        }
        self.decide(commands)
    }

    /// One sync, or a reauth before it half-way through the integration's life.
    fn next(
        &mut self,
        n: usize,
        at: Timestamp,
        share: usize,
    ) -> Result<Vec<NewEvent>, domain::DomainError> {
        let ctx = user_context(&self.workspace, &self.user, at);
        let system = CommandContext::new(Caller::system("sync worker"), at);
        let mut commands = Vec::new();
        if n.is_multiple_of(2) && self.syncs == 3 && self.events < share {
            commands.push((
                IntegrationCommand::MarkCredentialsExpired {
                    reason: ExpiryReason::InvalidGrant,
                    detail: "the refresh token was revoked".into(),
                },
                system.clone(),
            ));
            commands.push((
                IntegrationCommand::Reauthenticate {
                    credential_ref: CredentialRef(format!("vault:{}:2", self.id)),
                    granted_scopes: vec!["read".into()],
                    expires_at: None,
                },
                ctx.clone(),
            ));
        }
        let sync_id = SyncId::new();
        let kind = if self.syncs == 0 {
            SyncKind::Full
        } else {
            SyncKind::Incremental
        };
        commands.push((
            IntegrationCommand::RequestSync {
                sync_id,
                kind,
                claimed: false,
            },
            ctx,
        ));
        commands.push((
            IntegrationCommand::StartSync {
                sync_id,
                cursor: None,
            },
            system.clone(),
        ));
        for page in 1..=PAGES {
            commands.push((
                IntegrationCommand::RecordSyncProgress {
                    sync_id,
                    object: "contacts".into(),
                    page,
                    counts: RecordCounts {
                        pulled: 100,
                        created: 7,
                        updated: 12,
                        deleted: 1,
                    },
                    cursor: Some(format!("after-{page}")),
                },
                system.clone(),
            ));
        }
        let end = if self.syncs % 7 == 6 {
            IntegrationCommand::FailSync {
                sync_id,
                code: "rate_limited".into(),
                message: "429 from the provider, retried too often".into(),
                retryable: true,
                unrecorded: Default::default(),
                detail: None,
            }
        } else {
            IntegrationCommand::CompleteSync {
                sync_id,
                duration_ms: 4_200,
                unrecorded: Default::default(),
                detail: None,
            }
        };
        commands.push((end, system));
        self.syncs += 1;
        self.decide(commands)
    }
}

/// Writes the suite's log to `store`; returns its integrations.
async fn write_log(
    store: &Arc<dyn EventStore>,
    sizes: Sizes,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Vec<Generated>> {
    let users_per_workspace = 10;
    let mut integrations: Vec<Generated> = (0..sizes.integrations)
        .map(|n| {
            let workspace = format!("w{:03}", n % sizes.workspaces);
            let user = if n % 4 < 2 {
                format!("admin-{workspace}")
            } else {
                format!(
                    "u{}-{workspace}",
                    (n / sizes.workspaces) % users_per_workspace
                )
            };
            Generated {
                id: IntegrationId::new(),
                workspace,
                user,
                state: Integration::default(),
                version: 0,
                events: 0,
                syncs: 0,
            }
        })
        .collect();
    // Thirty days of history, a round every few hours.
    let mut at = Timestamp::now().plus(time::Duration::days(-30));
    let mut round = 0;
    loop {
        let mut appends = Vec::new();
        for (n, integration) in integrations.iter_mut().enumerate() {
            if integration.events >= sizes.events_per_integration {
                continue;
            }
            let events = if round == 0 {
                integration.connect(n, at)?
            } else {
                integration.next(n, at, sizes.events_per_integration)?
            };
            let expected = ExpectedVersion::from_version(integration.version);
            integration.version += events.len() as u64;
            appends.push((StreamName::integration(integration.id), expected, events));
        }
        if appends.is_empty() {
            break;
        }
        let mut done = futures::stream::iter(appends)
            .map(|(stream, expected, events)| {
                let store = store.clone();
                async move { store.append(&stream, expected, events).await }
            })
            .buffer_unordered(WRITERS);
        while let Some(appended) = done.next().await {
            appended?;
        }
        round += 1;
        at = at.plus(time::Duration::hours(6));
        progress(&format!(
            "writing the log: round {round}, {} events",
            store.head_position().await?
        ));
    }
    Ok(integrations)
}

/// A value of a row copied by the raw bulk insert.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

/// Every row of `table` in `db`, column by column, with the column names.
async fn all_rows(db: &ServiceDb, table: &str) -> anyhow::Result<(Vec<String>, Vec<Vec<Value>>)> {
    use sqlx::{Column, Row, TypeInfo};
    macro_rules! read {
        ($pool:expr) => {{
            let rows = sqlx::query(&format!("SELECT * FROM {table}"))
                .fetch_all($pool)
                .await?;
            // Each column's type from the schema, not from its values (NULL has none).
            let columns: Vec<(String, bool)> = rows
                .first()
                .map(|row| {
                    row.columns()
                        .iter()
                        .map(|c| (c.name().to_owned(), c.type_info().name().contains("INT")))
                        .collect()
                })
                .unwrap_or_default();
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut values = Vec::with_capacity(columns.len());
                for (i, (_, integer)) in columns.iter().enumerate() {
                    values.push(if *integer {
                        Value::Int(row.try_get::<Option<i64>, _>(i)?)
                    } else {
                        Value::Text(row.try_get::<Option<String>, _>(i)?)
                    });
                }
                out.push(values);
            }
            (columns.into_iter().map(|(name, _)| name).collect(), out)
        }};
    }
    Ok(match db {
        ServiceDb::Sqlite(pool) => read!(pool),
        ServiceDb::Postgres(pool) => read!(pool),
    })
}

/// The raw engine: the final rows of `from` written into the empty tables of `to` with
/// multi-row INSERTs in one transaction. Returns how long the writing took.
async fn bulk_insert(from: &ServiceDb, to: &ServiceDb) -> anyhow::Result<Duration> {
    let mut tables = Vec::new();
    for projection in Projection::ALL {
        for table in projection.tables() {
            tables.push((*table, all_rows(from, table).await?));
        }
    }
    let started = Instant::now();
    macro_rules! insert {
        ($pool:expr, $db:ty) => {{
            let mut tx = $pool.begin().await?;
            for (table, (columns, rows)) in &tables {
                if columns.is_empty() {
                    continue;
                }
                // Within both databases' limits on parameters per statement.
                let per_statement = (30_000 / columns.len()).max(1);
                for chunk in rows.chunks(per_statement) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(format!(
                        "INSERT INTO {table} ({}) ",
                        columns.join(", ")
                    ));
                    insert.push_values(chunk, |mut row, values| {
                        for value in values {
                            match value {
                                Value::Text(text) => row.push_bind(text.clone()),
                                Value::Int(n) => row.push_bind(*n),
                            };
                        }
                    });
                    insert.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        }};
    }
    match to {
        ServiceDb::Sqlite(pool) => insert!(pool, sqlx::Sqlite),
        ServiceDb::Postgres(pool) => insert!(pool, sqlx::Postgres),
    }
    Ok(started.elapsed())
}

/// Rebuilds into `db` (fresh) and bulk-inserts the result into `raw` (fresh): the rebuild's
/// events/s and the raw insert's, for the same events.
async fn rebuild_beside_raw(
    store: &Arc<dyn EventStore>,
    db: &ServiceDb,
    raw: &ServiceDb,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let told = std::sync::Mutex::new(Instant::now());
    let tell = |at: u64, head: u64| {
        if let Ok(mut told) = told.lock() {
            if told.elapsed() > Duration::from_secs(5) {
                *told = Instant::now();
                progress(&format!("rebuilding on {}: {at}/{head}", db.kind()));
            }
        }
    };
    let rebuilt =
        projections::rebuild::rebuild(store.as_ref(), db, &Projection::ALL, &tell).await?;
    let seconds = started.elapsed().as_secs_f64();
    let raw_seconds = bulk_insert(db, raw).await?.as_secs_f64();
    let events = rebuilt.events as f64;
    Ok((events / seconds, events / raw_seconds))
}

/// The `p`th percentile of `sorted`, in milliseconds.
use crate::engine::percentile_ms as percentile;

/// Times `sizes.queries` Installed pages and as many sync-logs pages on `db`: a random
/// workspace or integration, a random filter, half of them a page reached through a cursor
/// (after a first page of 50 rows of Installed, of 3 runs of the sync logs, since an
/// integration has only a few runs).
async fn time_queries(
    db: &ServiceDb,
    integrations: &[Generated],
    sizes: Sizes,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut installed_times = Vec::with_capacity(sizes.queries);
    for _ in 0..sizes.queries {
        let chosen = &integrations[rng.random_range(0..integrations.len())];
        let filter = match rng.random_range(0..4) {
            0 => installed::Filter::default(),
            1 => installed::Filter {
                status: Some("connected".into()),
                ..Default::default()
            },
            2 => installed::Filter {
                app: Some("hubspot".into()),
                ..Default::default()
            },
            _ => installed::Filter {
                scope: Some("personal".into()),
                ..Default::default()
            },
        };
        let cursor = if rng.random_bool(0.5) {
            installed::page(db, &chosen.workspace, &chosen.user, &filter, None, 50)
                .await?
                .next_cursor
        } else {
            None
        };
        let started = Instant::now();
        let page = installed::page(
            db,
            &chosen.workspace,
            &chosen.user,
            &filter,
            cursor.as_deref(),
            50,
        )
        .await?;
        installed_times.push(started.elapsed());
        std::hint::black_box(page);
    }
    let mut sync_times = Vec::with_capacity(sizes.queries);
    for _ in 0..sizes.queries {
        let chosen = &integrations[rng.random_range(0..integrations.len())];
        let filter = match rng.random_range(0..4) {
            0 => sync_runs::Filter::default(),
            1 => sync_runs::Filter {
                status: Some("completed".into()),
                ..Default::default()
            },
            2 => sync_runs::Filter {
                kind: Some("incremental".into()),
                ..Default::default()
            },
            _ => sync_runs::Filter {
                since: Some(Timestamp::now().plus(time::Duration::days(-20)).to_string()),
                ..Default::default()
            },
        };
        let cursor = if rng.random_bool(0.5) {
            sync_runs::list(
                db,
                &chosen.workspace,
                &chosen.user,
                chosen.id,
                &filter,
                None,
                3,
            )
            .await?
            .next_cursor
        } else {
            None
        };
        let started = Instant::now();
        let page = sync_runs::list(
            db,
            &chosen.workspace,
            &chosen.user,
            chosen.id,
            &filter,
            cursor,
            50,
        )
        .await?;
        sync_times.push(started.elapsed());
        std::hint::black_box(page);
    }
    installed_times.sort();
    sync_times.sort();
    Ok((installed_times, sync_times))
}

/// Runs the suite in `scratch`: SQLite there, and PostgreSQL at `postgres` when given (in
/// schemas of its own, dropped afterwards).
pub async fn run(
    scratch: &std::path::Path,
    postgres: Option<&str>,
    sizes: Sizes,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let store: Arc<dyn EventStore> =
        Arc::new(eventstore::SledEventStore::open(scratch.join("log"))?);
    let integrations = write_log(&store, sizes, progress).await?;
    let events = store.head_position().await?;
    progress(&format!(
        "{events} events of {} integrations in {} workspaces",
        integrations.len(),
        sizes.workspaces
    ));
    let mut figures = Vec::new();

    let sqlite = ServiceDb::open_sqlite(&scratch.join("read.db")).await?;
    let sqlite_raw = ServiceDb::open_sqlite(&scratch.join("raw.db")).await?;
    let (ours, raw) = rebuild_beside_raw(&store, &sqlite, &sqlite_raw, progress).await?;
    figures.push(Figure::against_raw("rebuild_sqlite", ours, "events/s", raw));
    let (installed_times, sync_times) = time_queries(&sqlite, &integrations, sizes).await?;
    figures.push(Figure::alone(
        "installed_p50_ms",
        percentile(&installed_times, 0.5),
        "ms",
    ));
    figures.push(Figure::alone(
        "installed_p99_ms",
        percentile(&installed_times, 0.99),
        "ms",
    ));
    figures.push(Figure::alone(
        "sync_logs_p50_ms",
        percentile(&sync_times, 0.5),
        "ms",
    ));
    figures.push(Figure::alone(
        "sync_logs_p99_ms",
        percentile(&sync_times, 0.99),
        "ms",
    ));

    let mut backend = "sqlite".to_owned();
    if let Some(url) = postgres {
        backend.push_str(" and postgres");
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let (db, raw_db) = (
            ServiceDb::connect_postgres_in_schema(url, &format!("bench_{suffix}")).await?,
            ServiceDb::connect_postgres_in_schema(url, &format!("bench_raw_{suffix}")).await?,
        );
        let measured = async {
            let (ours, raw) = rebuild_beside_raw(&store, &db, &raw_db, progress).await?;
            let times = time_queries(&db, &integrations, sizes).await?;
            anyhow::Ok((ours, raw, times))
        }
        .await;
        for db in [&db, &raw_db] {
            db.drop_schema().await?;
        }
        let (ours, raw, (installed_times, sync_times)) = measured?;
        figures.push(Figure::against_raw(
            "rebuild_postgres",
            ours,
            "events/s",
            raw,
        ));
        figures.push(Figure::alone(
            "installed_postgres_p50_ms",
            percentile(&installed_times, 0.5),
            "ms",
        ));
        figures.push(Figure::alone(
            "installed_postgres_p99_ms",
            percentile(&installed_times, 0.99),
            "ms",
        ));
        figures.push(Figure::alone(
            "sync_logs_postgres_p50_ms",
            percentile(&sync_times, 0.5),
            "ms",
        ));
        figures.push(Figure::alone(
            "sync_logs_postgres_p99_ms",
            percentile(&sync_times, 0.99),
            "ms",
        ));
    }
    Ok(Report {
        suite: "projections".into(),
        backend,
        machine: machine(),
        figures,
    })
}
