//! `harmony log …`: operations on the event log itself.

use std::sync::Arc;

use anyhow::Context;
use eventstore::{
    EventStore, JetStreamConfig, JetStreamEventStore, JetStreamRecordLog, RecordLog,
    SledEventStore, SledRecordLog,
};

use crate::cli::CopyArgs;

type Logs = (Arc<dyn EventStore>, Arc<dyn RecordLog>);

/// Opens the two logs named on the command line: a NATS URL, or a data directory (its `log/`
/// and `records/`).
async fn open(location: &str, namespace: &str, create: bool) -> anyhow::Result<Logs> {
    if location.starts_with("nats://") || location.starts_with("tls://") {
        let mut config = JetStreamConfig::new(location);
        config.namespace = namespace.to_owned();
        let store = JetStreamEventStore::connect(config)
            .await
            .with_context(|| format!("while opening the event log on JetStream at {location}"))?;
        let records = JetStreamRecordLog::open(&store)
            .await
            .with_context(|| format!("while opening the records on JetStream at {location}"))?;
        return Ok((Arc::new(store), Arc::new(records)));
    }
    let dir = std::path::Path::new(location).join("log");
    if !create && !dir.is_dir() {
        anyhow::bail!(
            "{location} holds no event log (no {} directory)",
            dir.display()
        );
    }
    let store = SledEventStore::open(&dir).with_context(|| {
        format!(
            "while opening the event log in {} (is a service running on it?)",
            dir.display()
        )
    })?;
    let records_dir = std::path::Path::new(location).join("records");
    let records = SledRecordLog::open(&records_dir, crate::RECORDS_MAX_AGE)
        .with_context(|| format!("while opening the records in {}", records_dir.display()))?;
    Ok((Arc::new(store), Arc::new(records)))
}

/// `harmony log copy`: copies with a progress bar on standard error and prints what it did.
pub async fn copy(args: &CopyArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    if args.from == args.to && args.from_namespace == args.to_namespace {
        anyhow::bail!("--from and --to name the same log");
    }
    let (from, from_records) = open(&args.from, &args.from_namespace, false).await?;
    let (to, to_records) = open(&args.to, &args.to_namespace, true).await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
        )
        .context("the progress template is valid")?,
    );
    let report = eventstore::copy::copy_log(from.as_ref(), to.as_ref(), &|read, total| {
        bar.set_length(total);
        bar.set_position(read);
    })
    .await
    .with_context(|| format!("while copying the log from {} to {}", args.from, args.to))?;
    bar.finish_and_clear();
    let records = eventstore::copy::copy_records(from_records.as_ref(), to_records.as_ref())
        .await
        .with_context(|| {
            format!(
                "while copying the records from {} to {}",
                args.from, args.to
            )
        })?;
    writeln!(
        out,
        "copied {} events ({} were already there) of {} streams, and {records} record changes, from {} to {}; every stream verifies on the target",
        report.copied, report.skipped, report.streams, args.from, args.to
    )?;
    Ok(())
}
