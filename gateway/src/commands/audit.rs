//! The auditor's commands: `harmony history`, `harmony verify` and `harmony export`, read
//! straight from the log (the embedded log is the data directory's; stop the service first,
//! as sled admits one process).

use std::io::Write;

use anyhow::Context;
use command::checkpoints::CheckpointCheck;
use command::repository::Repository;
use domain::{Integration, IntegrationId, StreamName, Timestamp, WorkspaceId};
use serde_json::json;

use crate::cli::{ExportArgs, HistoryArgs, StorageArgs, VerifyArgs};
use crate::views::{EventView, StateView};
use crate::{open_checkpoints, open_logs, Logs};

const PAGE: usize = 1000;

async fn open(storage: &StorageArgs) -> anyhow::Result<Logs> {
    if storage.nats_url.is_none() && !storage.data_dir.join("log").is_dir() {
        anyhow::bail!(
            "{} holds no event log: pass --data-dir (or --nats-url)",
            storage.data_dir.display()
        );
    }
    open_logs(
        storage.jetstream_config(),
        &storage.data_dir,
        storage.records_max_age(),
    )
    .await
}

fn integration(text: &str) -> anyhow::Result<IntegrationId> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{text} is not an integration id"))
}

/// `harmony history <integration> [--as-of T] [--json]`.
pub async fn history(args: &HistoryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let id = integration(&args.integration)?;
    let as_of = args
        .as_of
        .as_deref()
        .map(|text| {
            Timestamp::parse(text)
                .map_err(|e| anyhow::anyhow!("--as-of must be an RFC 3339 time: {e}"))
        })
        .transpose()?;
    let logs = open(&args.storage).await?;
    let stream = StreamName::integration(id);
    if logs.store.stream_version(&stream).await?.is_none() {
        anyhow::bail!("there is no integration {id} in this log");
    }
    if let Some(as_of) = as_of {
        let repo = Repository::new(logs.store.clone());
        let loaded = repo
            .load_as_of::<Integration>(&stream, as_of)
            .await
            .context("while folding the history")?;
        let state = StateView::new(id, as_of, loaded);
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&state)?)?;
        } else {
            writeln!(out, "{}", serde_json::to_string_pretty(&state)?)?;
        }
        return Ok(());
    }
    if !args.json {
        writeln!(out, "version\toccurred_at\tactor\ttype")?;
    }
    let mut from = 1;
    loop {
        let page = logs.store.read_stream(&stream, from, PAGE).await?;
        for event in &page {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&EventView::from(event))?)?;
            } else {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    event.version,
                    event.metadata.occurred_at,
                    event.metadata.actor,
                    event.event_type
                )?;
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.version + 1,
            _ => return Ok(()),
        }
    }
}

/// `harmony verify [<integration>|--all]`.
pub async fn verify(args: &VerifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let logs = open(&args.storage).await?;
    let checkpoints = open_checkpoints(
        &logs,
        &args.storage.data_dir,
        args.checkpoint_key.as_deref(),
        args.storage.checkpoint_key_base64.as_ref(),
    )
    .await?;
    let verified = match &args.integration {
        Some(text) => {
            let stream = StreamName::integration(integration(text)?);
            if logs.store.stream_version(&stream).await?.is_none() {
                anyhow::bail!("there is no integration {text} in this log");
            }
            vec![checkpoints.verify(logs.store.as_ref(), &stream).await?]
        }
        None => {
            // One pass over the log checks every stream.
            let head = logs.store.head_position().await?;
            let bar = indicatif::ProgressBar::new(head).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events verified  eta {eta}",
                )
                .context("the progress template is valid")?,
            );
            let verified = checkpoints
                .verify_all(logs.store.as_ref(), &|at| bar.set_position(at))
                .await?;
            bar.finish_and_clear();
            verified
        }
    };
    // Each integration's run outcomes commit to their runs' detail: checked in the run-detail
    // log, where detail past the retention is expected to be gone.
    let retention = args.storage.run_detail_retention();
    let mut runs = Vec::with_capacity(verified.len());
    for verified in &verified {
        let stream = &verified.chain.stream;
        runs.push(if stream.integration_id().is_some() {
            command::run_detail::check_runs(
                logs.store.as_ref(),
                logs.detail.as_ref(),
                stream,
                retention,
            )
            .await?
        } else {
            command::run_detail::RunDetailReport::default()
        });
    }
    let mut events = 0;
    for (verified, runs) in verified.iter().zip(&runs) {
        let (report, checkpoint) = (&verified.chain, &verified.checkpoint);
        let stream = &report.stream;
        events += report.events;
        if args.json {
            writeln!(
                out,
                "{}",
                json!({"stream": stream.as_str(),
                       "intact": verified.is_intact() && runs.holds(),
                       "events": report.events, "head": report.head.to_hex(),
                       "broken": report.broken, "checkpoint": checkpoint,
                       "run_detail": runs})
            )?;
        } else if args.integration.is_some() && verified.is_intact() && runs.holds() {
            let signed = match checkpoint {
                CheckpointCheck::Holds { version, signed_at } => {
                    format!("; the checkpoint signed at version {version} on {signed_at} holds")
                }
                _ => "; not signed yet".to_owned(),
            };
            writeln!(
                out,
                "{stream}: intact, {} events, head {}{signed}; {} runs with detail: {} intact, {} aged out",
                report.events,
                report.head.to_hex(),
                runs.runs,
                runs.intact,
                runs.aged_out
            )?;
        }
    }
    // Every stream is reported (as JSON) before the first broken one fails the command.
    let broken = verified
        .iter()
        .zip(&runs)
        .filter(|(v, runs)| !v.is_intact() || !runs.holds())
        .count();
    let also = match broken {
        0 | 1 => String::new(),
        n => format!(" ({} other streams are broken too)", n - 1),
    };
    for verified in &verified {
        let stream = &verified.chain.stream;
        if let Some(broken) = &verified.chain.broken {
            anyhow::bail!(
                "{stream} is broken at version {} (position {}): {}{also}",
                broken.version,
                broken.position,
                broken.reason
            );
        }
        if let CheckpointCheck::Broken { reason, .. } = &verified.checkpoint {
            anyhow::bail!("{stream} does not match its signed checkpoint: {reason}{also}");
        }
    }
    for (verified, runs) in verified.iter().zip(&runs) {
        if let Some(run) = runs.broken.first() {
            anyhow::bail!(
                "{}: the run {} (outcome at version {}): {}{also}",
                verified.chain.stream,
                run.sync_id,
                run.outcome_version,
                run.reason
            );
        }
    }
    if !args.json && args.integration.is_none() {
        writeln!(
            out,
            "{} streams, {events} events: every chain intact and every signed checkpoint holds; {} runs with detail: {} intact, {} aged out",
            verified.len(),
            runs.iter().map(|r| r.runs).sum::<u64>(),
            runs.iter().map(|r| r.intact).sum::<u64>(),
            runs.iter().map(|r| r.aged_out).sum::<u64>()
        )?;
    }
    Ok(())
}

/// `harmony export --workspace W`: the lifecycle events of every integration of the
/// workspace, personal ones included (the operator reads the whole log), as NDJSON.
pub async fn export(args: &ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let workspace: WorkspaceId = args
        .workspace
        .parse()
        .map_err(|e| anyhow::anyhow!("--workspace: {e}"))?;
    let logs = open(&args.storage).await?;
    let head = logs.store.head_position().await?;
    let mut from = 1;
    let mut exported = 0u64;
    while from <= head {
        let page = logs.store.read_workspace(&workspace, from, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for event in page
            .iter()
            .filter(|e| e.position <= head && e.stream.integration_id().is_some())
        {
            writeln!(out, "{}", serde_json::to_string(&EventView::from(event))?)?;
            exported += 1;
        }
        from = last + 1;
    }
    out.flush()?;
    eprintln!("exported {exported} events of workspace {workspace}");
    Ok(())
}
