//! Opening what the service keeps: the event, records and run-detail logs (sled or JetStream), the
//! checkpoint log and its key, the service database, the data directory and its key files.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use command::checkpoints::Checkpoints;
use eventstore::{
    EventStore, JetStreamConfig, JetStreamEventStore, JetStreamRecordLog, JetStreamRunDetailLog,
    RecordLog, RunDetailLog, SledEventStore, SledRecordLog, SledRunDetailLog,
};

/// The logs of a service: the event log, the records and the run detail, on one backend.
pub struct Logs {
    pub store: Arc<dyn EventStore>,
    pub records: Arc<dyn RecordLog>,
    /// The run-detail log: sync runs' progress, aged out after the retention.
    pub detail: Arc<dyn RunDetailLog>,
    pub backend: Backend,
    /// The JetStream store itself when the log is there, for the work queues beside it.
    pub jetstream: Option<JetStreamEventStore>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

use crate::settings::Backend;

/// Opens the event log and the records: on JetStream when `jetstream` is given, else on sled
/// under `data_dir` (`log/` and `records/`, created if missing).
pub async fn open_logs(
    jetstream: Option<JetStreamConfig>,
    data_dir: &std::path::Path,
    records_max_age: std::time::Duration,
) -> anyhow::Result<Logs> {
    Ok(match jetstream {
        Some(config) => {
            let url = config.url.clone();
            let store = JetStreamEventStore::connect(config)
                .await
                .with_context(|| {
                    format!("while opening the event log on NATS JetStream at {url}")
                })?;
            let records = JetStreamRecordLog::open(&store)
                .await
                .with_context(|| format!("while opening the records on NATS JetStream at {url}"))?;
            let detail = JetStreamRunDetailLog::open(&store).await.with_context(|| {
                format!("while opening the run detail on NATS JetStream at {url}")
            })?;
            Logs {
                store: Arc::new(store.clone()),
                records: Arc::new(records),
                detail: Arc::new(detail),
                backend: Backend::JetStream,
                jetstream: Some(store),
            }
        }
        None => {
            let log_dir = data_dir.join("log");
            let store = SledEventStore::open(&log_dir).with_context(|| {
                format!(
                    "while opening the event log in {} (is another process using it?)",
                    log_dir.display()
                )
            })?;
            let records_dir = data_dir.join("records");
            let records =
                SledRecordLog::open(&records_dir, records_max_age).with_context(|| {
                    format!("while opening the records in {}", records_dir.display())
                })?;
            let detail_dir = data_dir.join("run-detail");
            let detail = SledRunDetailLog::open(&detail_dir).with_context(|| {
                format!("while opening the run detail in {}", detail_dir.display())
            })?;
            Logs {
                store: Arc::new(store),
                records: Arc::new(records),
                detail: Arc::new(detail),
                backend: Backend::Sled,
                jetstream: None,
            }
        }
    })
}

/// Where the checkpoint key is kept under a data directory (unless `HARMONY_CHECKPOINT_KEY`
/// holds it).
pub fn checkpoint_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("checkpoint.key")
}

/// Opens the checkpoint log beside `logs` (`checkpoints/` under `data_dir`, or the
/// checkpoints stream on JetStream) and the key: from `key_file` when given, else the data
/// directory's (created when absent), unless `from_env` (`HARMONY_CHECKPOINT_KEY`, read at
/// start) holds it.
pub async fn open_checkpoints(
    logs: &Logs,
    data_dir: &std::path::Path,
    key_file: Option<&std::path::Path>,
    from_env: Option<&secrecy::SecretString>,
) -> anyhow::Result<Checkpoints> {
    let log: Arc<dyn command::checkpoints::CheckpointLog> = match &logs.jetstream {
        Some(jetstream) => Arc::new(
            command::checkpoints::JetStreamCheckpointLog::open(jetstream)
                .await
                .context("while opening the checkpoint log on NATS JetStream")?,
        ),
        None => {
            let dir = data_dir.join("checkpoints");
            Arc::new(
                command::checkpoints::SledCheckpointLog::open(&dir).with_context(|| {
                    format!("while opening the checkpoint log in {}", dir.display())
                })?,
            )
        }
    };
    let path = key_file.map_or_else(|| checkpoint_key_path(data_dir), std::path::Path::to_owned);
    let key = command::checkpoints::CheckpointKey::load_or_create(
        &path,
        from_env.map(secrecy::ExposeSecret::expose_secret),
    )
    .context("the checkpoint key")?;
    Ok(Checkpoints {
        log,
        key: Arc::new(key),
    })
}

/// Creates the data directory (and its parents) if missing, readable by its owner alone; an
/// existing one that others may enter is made private.
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .with_context(|| format!("while creating the data directory {}", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::info!(dir = %dir.display(), "making the data directory its owner's alone");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("while making {} private", dir.display()))?;
        }
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("while creating the data directory {}", dir.display()))?;
    Ok(())
}

/// Opens (and migrates) the read models: on PostgreSQL at `database_url` when given, else in
/// SQLite at `read.db` under `data_dir` (created readable by its owner alone; SQLite gives its
/// journal files the same mode).
pub async fn open_service_db(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<database::ServiceDb> {
    Ok(match database_url {
        Some(url) => database::ServiceDb::connect_postgres(url)
            .await
            .context("while opening the read models on PostgreSQL")?,
        None => {
            let path = data_dir.join("read.db");
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("while creating {}", path.display()))?;
            }
            database::ServiceDb::open_sqlite(&path)
                .await
                .with_context(|| format!("while opening the read models in {}", path.display()))?
        }
    })
}

/// Where the master key file lives under a data directory (unless `HARMONY_MASTER_KEY` holds
/// the key).
pub fn master_key_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("master.key")
}
