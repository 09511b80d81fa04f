//! `harmony projections …`: operations on the read models.

use anyhow::Context;
use projections::runner::Projection;

use crate::cli::RebuildArgs;
use crate::{open_logs, open_service_db, Logs};

/// `harmony projections rebuild`: replays the log into fresh tables with a progress bar on
/// standard error (rate and time left), swaps them in, and prints what it did.
pub async fn rebuild(args: &RebuildArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let chosen: Vec<Projection> = match &args.name {
        Some(name) => vec![Projection::named(name).with_context(|| {
            let names: Vec<_> = Projection::ALL.iter().map(|p| p.name()).collect();
            format!(
                "there is no read model called {name:?}; the read models are {}",
                names.join(", ")
            )
        })?],
        None => Projection::ALL.to_vec(),
    };
    let storage = &args.storage;
    if storage.nats_url.is_none() && !storage.data_dir.join("log").is_dir() {
        anyhow::bail!(
            "{} holds no event log (no log directory): name the service's --data-dir, or --nats-url",
            storage.data_dir.display()
        );
    }
    let Logs { store, .. } = open_logs(
        storage.jetstream_config(),
        &storage.data_dir,
        storage.records_max_age(),
    )
    .await
    .context(
        "the embedded event log is used by one process at a time: stop the service on this \
         data directory before rebuilding (on JetStream, rebuild beside the running services)",
    )?;
    let db = open_service_db(storage.database_url.as_deref(), &storage.data_dir).await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
        )
        .context("the progress template is valid")?,
    );
    let started = std::time::Instant::now();
    let rebuilt = projections::rebuild::rebuild(store.as_ref(), &db, &chosen, &|position, head| {
        bar.set_length(head);
        bar.set_position(position);
    })
    .await
    .context("while rebuilding the read models")?;
    bar.finish_and_clear();
    let names: Vec<_> = chosen.iter().map(|p| p.name()).collect();
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "rebuilt {} from {} events in {seconds:.1} s ({:.0} events/s) on {}; swapped in at position {}",
        names.join(" and "),
        rebuilt.events,
        rebuilt.events as f64 / seconds.max(1e-9),
        db.kind(),
        rebuilt.position
    )?;
    db.close().await;
    Ok(())
}
