//! `harmony bench`: runs a suite and prints its figures as a table, or as one JSON object
//! (with `--json`) and nothing else on standard output. Progress goes to standard error.

use std::io::Write;

use anyhow::Context;
use eventstore::bench::{Report, Sizes};

use crate::cli::{Backend, BenchArgs, Suite};

pub async fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("while creating the benchmark's scratch directory")?;
    let progress = |message: &str| eprintln!("bench: {message}");
    let report = match (args.suite, args.backend) {
        (Suite::Projections, Backend::Sled) => {
            let sizes = if args.quick {
                projections::bench::Sizes::QUICK
            } else {
                projections::bench::Sizes::FULL
            };
            projections::bench::run(
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
        (Suite::Eventstore, Backend::Sled) => {
            let sizes = if args.quick {
                Sizes::QUICK
            } else {
                Sizes::FULL
            };
            eventstore::bench::run(scratch.path(), sizes, &progress).await?
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
            eventstore::bench::jetstream::run(url, sizes, &progress)
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
