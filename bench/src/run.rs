//! `harmony bench`: runs a suite and prints its figures as a table, or as one JSON object
//! (with `--json`) and nothing else on standard output. Progress goes to standard error.

use std::io::Write;

use crate::engine::{Report, Sizes};
use anyhow::Context;

use gateway::cli::{Backend, BenchArgs, Suite};

pub async fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let (Some(api), Some(records)) = (&args.rss_child_api, args.rss_child_records) {
        return rss_child(args, api, records, out).await;
    }
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("while creating the benchmark's scratch directory")?;
    let progress = |message: &str| eprintln!("bench: {message}");
    let report = match (args.suite, args.backend) {
        (Suite::Projections, Backend::Sled) => {
            let sizes = if args.quick {
                crate::read_models::Sizes::QUICK
            } else {
                crate::read_models::Sizes::FULL
            };
            crate::read_models::run(
                scratch.path(),
                args.database_url.as_deref(),
                sizes,
                &progress,
            )
            .await?
        }
        (Suite::Projections, Backend::Jetstream) => {
            anyhow::bail!("the projections suite reads its log from sled: leave out --backend")
        }
        (Suite::Sync, Backend::Sled) => {
            let sizes = if args.quick {
                crate::sync::Sizes::QUICK
            } else {
                crate::sync::Sizes::FULL
            };
            sync_suite(args, scratch.path(), sizes, &progress).await?
        }
        (Suite::Sync, Backend::Jetstream) => {
            anyhow::bail!("the sync suite runs on the embedded stack: leave out --backend")
        }
        (Suite::Gateway, Backend::Sled) => {
            let sizes = if args.quick {
                crate::api::Sizes::QUICK
            } else {
                crate::api::Sizes::FULL
            };
            crate::api::run(scratch.path(), sizes, &progress).await?
        }
        (Suite::Gateway, Backend::Jetstream) => {
            anyhow::bail!("the gateway suite runs on the embedded default: leave out --backend")
        }
        (Suite::Scale, _) => {
            let (sizes, minutes) = if args.quick {
                (crate::scale::Sizes::QUICK, args.minutes.unwrap_or(1.0))
            } else {
                (crate::scale::Sizes::FULL, args.minutes.unwrap_or(12.0))
            };
            anyhow::ensure!(
                minutes > 0.0 && minutes.is_finite(),
                "--minutes must be a positive number of minutes"
            );
            let window = std::time::Duration::from_secs_f64(minutes * 60.0);
            let stack = match args.backend {
                Backend::Sled => crate::scale::Stack::Embedded,
                Backend::Jetstream => crate::scale::Stack::distributed(
                    args.nats_url
                        .as_deref()
                        .context("--backend jetstream needs --nats-url")?,
                    args.database_url.as_deref().context(
                        "the scale suite on JetStream needs PostgreSQL too: --database-url",
                    )?,
                )?,
            };
            crate::scale::run(scratch.path(), &stack, sizes, window, &progress).await?
        }
        (Suite::Eventstore, Backend::Sled) => {
            let sizes = if args.quick {
                Sizes::QUICK
            } else {
                Sizes::FULL
            };
            crate::engine::run(scratch.path(), sizes, &progress).await?
        }
        (Suite::Eventstore, Backend::Jetstream) => {
            let sizes = if args.quick {
                Sizes::JETSTREAM_QUICK
            } else {
                Sizes::JETSTREAM_FULL
            };
            let url = args
                .nats_url
                .as_deref()
                .context("--backend jetstream needs --nats-url")?;
            crate::engine::jetstream::run(url, args.nats_replicas, sizes, &progress)
                .await
                .with_context(|| format!("while benchmarking JetStream at {url}"))?
        }
    };
    if args.json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&report, out)?;
    }
    Ok(())
}

/// A fake HubSpot in a process of its own: started from this same binary, its base URL read
/// from its first line of output; killed when dropped.
pub(crate) struct FakeProcess {
    child: tokio::process::Child,
    pub(crate) api: url::Url,
}

impl FakeProcess {
    pub(crate) async fn start(contacts: u64) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().context("while finding the harmony binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["fake-provider", "hubspot", "--companies", "0", "--contacts"])
            .arg(contacts.to_string())
            .args(["--accept-token", crate::sync::BENCH_TOKEN])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("while starting the fake HubSpot")?;
        let stdout = child.stdout.take().context("the fake's output")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = lines
            .next_line()
            .await?
            .context("the fake HubSpot exited before printing its URL")?;
        let api = url::Url::parse(first.trim()).context("the fake HubSpot's URL")?;
        Ok(Self { child, api })
    }
}

async fn sync_suite(
    args: &BenchArgs,
    scratch: &std::path::Path,
    sizes: crate::sync::Sizes,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    let fake = FakeProcess::start(sizes.records).await?;
    let api = fake.api.clone();
    let rss = || async move {
        let mut fake = fake;
        let _ = fake.child.kill().await;
        let large = FakeProcess::start(sizes.rss_records).await?;
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe);
        child
            .args(["bench", "sync", "--rss-child-api", large.api.as_str()])
            .arg("--rss-child-records")
            .arg(sizes.rss_records.to_string());
        if let Some(dir) = &args.dir {
            child.arg("--dir").arg(dir);
        }
        let output = child
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .context("while running the memory measurement's process")?;
        anyhow::ensure!(
            output.status.success(),
            "the memory measurement's process failed"
        );
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        answer["rss_mb"]
            .as_f64()
            .context("the memory measurement printed no rss_mb")
    };
    crate::sync::run(scratch, &api, sizes, rss, progress).await
}

/// The sync suite's memory measurement, in its own process: prints `{"rss_mb": …}`.
async fn rss_child(
    args: &BenchArgs,
    api: &str,
    records: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }?;
    let api = url::Url::parse(api)?;
    let rss_mb = crate::sync::rss_child(scratch.path(), &api, records).await?;
    writeln!(
        out,
        "{}",
        serde_json::json!({ "rss_mb": (rss_mb * 10.0).round() / 10.0 })
    )?;
    Ok(())
}

fn write_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "suite {} on {} — {}",
        report.suite, report.backend, report.machine
    )?;
    writeln!(
        out,
        "{:<26} {:>14} {:<10} {:>14} {:>7}",
        "figure", "value", "unit", "raw", "ratio"
    )?;
    for figure in &report.figures {
        let value = if figure.value >= 100.0 {
            format!("{:.0}", figure.value)
        } else {
            format!("{:.3}", figure.value)
        };
        let raw = figure
            .raw
            .map_or_else(|| "-".to_owned(), |raw| format!("{raw:.0}"));
        let ratio = figure
            .ratio
            .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}"));
        writeln!(
            out,
            "{:<26} {:>14} {:<10} {:>14} {:>7}",
            figure.name, value, figure.unit, raw, ratio
        )?;
    }
    Ok(())
}
