//! `harmony log …`: operations on the event log itself.

use std::path::Path;

use anyhow::Context;
use eventstore::JetStreamConfig;

use crate::cli::{AgeOutArgs, CopyArgs};
use crate::{open_logs, Logs, RECORDS_MAX_AGE};

/// `harmony log age-out`: one pass of what the service does hourly.
pub async fn age_out(args: &AgeOutArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let storage = &args.storage;
    if storage.nats_url.is_none() && !storage.data_dir.join("log").is_dir() {
        anyhow::bail!(
            "{} holds no event log: pass --data-dir (or --nats-url)",
            storage.data_dir.display()
        );
    }
    let logs = open_logs(
        storage.jetstream_config(),
        &storage.data_dir,
        storage.records_max_age(),
    )
    .await?;
    let db =
        crate::storage::open_service_db(storage.database_url.as_deref(), &storage.data_dir).await?;
    let retention = storage.run_detail_retention();
    let (runs, rows) = crate::tasks::age_out_once(logs.detail.as_ref(), &db, retention).await?;
    writeln!(
        out,
        "aged out the detail of {runs} sync runs and {rows} sync-log rows older than {} days",
        retention.as_secs() / 86_400
    )?;
    Ok(())
}

/// Opens the two logs named on the command line: a NATS URL, or a data directory (its `log/`
/// and `records/`), which must hold a log unless `create`.
async fn open(location: &str, namespace: &str, create: bool) -> anyhow::Result<Logs> {
    if location.starts_with("nats://") || location.starts_with("tls://") {
        let mut config = JetStreamConfig::new(location);
        config.namespace = namespace.to_owned();
        return open_logs(Some(config), Path::new(location), RECORDS_MAX_AGE).await;
    }
    let dir = Path::new(location);
    if !create && !dir.join("log").is_dir() {
        anyhow::bail!("{location} holds no event log (no log directory)");
    }
    open_logs(None, dir, RECORDS_MAX_AGE).await
}

/// `harmony log copy`: copies with a progress bar on standard error and prints what it did.
pub async fn copy(args: &CopyArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    if args.from == args.to && args.from_namespace == args.to_namespace {
        anyhow::bail!("--from and --to name the same log");
    }
    let from = open(&args.from, &args.from_namespace, false).await?;
    let to = open(&args.to, &args.to_namespace, true).await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
        )
        .context("the progress template is valid")?,
    );
    let report =
        eventstore::copy::copy_log(from.store.as_ref(), to.store.as_ref(), &|read, total| {
            bar.set_length(total);
            bar.set_position(read);
        })
        .await
        .with_context(|| format!("while copying the log from {} to {}", args.from, args.to))?;
    bar.finish_and_clear();
    let records = eventstore::copy::copy_records(from.records.as_ref(), to.records.as_ref())
        .await
        .with_context(|| {
            format!(
                "while copying the records from {} to {}",
                args.from, args.to
            )
        })?;
    let runs = eventstore::copy::copy_run_detail(
        from.store.as_ref(),
        from.detail.as_ref(),
        to.detail.as_ref(),
    )
    .await
    .with_context(|| {
        format!(
            "while copying the run detail from {} to {}",
            args.from, args.to
        )
    })?;
    writeln!(
        out,
        "copied {} events ({} were already there) of {} streams, {records} record changes and the detail of {runs} sync runs, from {} to {}; every stream verifies on the target",
        report.copied, report.skipped, report.streams, args.from, args.to
    )?;
    Ok(())
}
