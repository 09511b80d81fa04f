//! `harmony`: parses the command line and hands over to the gateway library (and, for
//! `harmony bench`, to the benchmark suites).

use clap::Parser;
use gateway::cli::{Cli, Command, ServeArgs};
use gateway::{Application, Settings};
use tracing_subscriber::EnvFilter;

/// sled and the JSON paths allocate many small objects; mimalloc serves them markedly faster
/// than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Everything this process creates (the data directory, the read models, the logs, key
    // files, exports) is its owner's alone.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("HARMONY_LOG")
        // PostgreSQL's notices ("table … does not exist, skipping") are not news.
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal; none in a log file or a journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if matches!(&cli.command, Command::Serve(args) if args.log_json) {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::History(args) => {
            gateway::commands::audit::history(&args, &mut std::io::stdout().lock()).await
        }
        Command::Verify(args) => {
            gateway::commands::audit::verify(&args, &mut std::io::stdout().lock()).await
        }
        Command::Export(args) => {
            gateway::commands::audit::export(&args, &mut std::io::stdout().lock()).await
        }
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run::run(&args, &mut std::io::stdout().lock()).await,
        Command::Log(gateway::cli::LogCommand::Copy(args)) => {
            gateway::commands::log::copy(&args, &mut std::io::stdout().lock()).await
        }
        Command::Log(gateway::cli::LogCommand::AgeOut(args)) => {
            gateway::commands::log::age_out(&args, &mut std::io::stdout().lock()).await
        }
        Command::Vault(gateway::cli::VaultCommand::RotateMasterKey(args)) => {
            gateway::commands::vault::rotate(&args, &mut std::io::stdout().lock()).await
        }
        Command::Tokens(command) => {
            gateway::tokens::run(&command, &mut std::io::stdout().lock()).await
        }
        Command::Projections(gateway::cli::ProjectionsCommand::Rebuild(args)) => {
            gateway::commands::read_models::rebuild(&args, &mut std::io::stdout().lock()).await
        }
        #[cfg(feature = "fakes")]
        Command::FakeProvider(gateway::cli::FakeProviderCommand::Hubspot(args)) => {
            gateway::commands::fake_provider::fake_hubspot(&args).await
        }
        #[cfg(feature = "fakes")]
        Command::FakeProvider(other) => gateway::commands::fake_provider::fake(&other).await,
    }
}

/// `harmony serve`, or with `--demo` the service beside every fake provider.
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let shutdown = gateway::shutdown_signal();
    #[cfg(feature = "fakes")]
    let demo = match args.demo {
        true => Some(gateway::commands::demo::Demo::start().await?),
        false => None,
    };
    #[cfg(not(feature = "fakes"))]
    if args.demo {
        anyhow::bail!(
            "--demo needs the fake providers, which this build leaves out (cargo feature `fakes`)"
        );
    }
    let mut settings = Settings {
        adapters: adapters::config::AdaptersConfig::default(),
        outbound: adapters::outbound::OutboundPolicy::new(args.outbound_allow),
        schedule_tick: std::time::Duration::from_secs(args.schedule_tick_seconds.max(1)),
        sync: gateway::SyncSettings {
            lease: std::time::Duration::from_secs(args.sync_lease_seconds.max(1)),
            work_ack_wait: std::time::Duration::from_secs(args.sync_work_ack_wait_seconds.max(1)),
            concurrent_runs: usize::from(args.sync_concurrency),
        },
        jetstream: args.storage.jetstream_config(),
        master_key: args.storage.master_key.clone(),
        checkpoint_key: args.storage.checkpoint_key_base64.clone(),
        records_max_age: args.storage.records_max_age(),
        run_detail_retention: args.storage.run_detail_retention(),
        data_dir: args.storage.data_dir,
        listen: args.listen,
        database_url: args.storage.database_url,
        checkpoint_every: std::time::Duration::from_secs(args.checkpoint_seconds.max(1)),
        run_workers: !args.no_workers,
        max_streams_per_token: args.max_streams_per_token.max(1),
        metrics: gateway::MetricsSettings {
            listen: args.metrics_listen,
            token: args
                .metrics_token
                .filter(|token| !token.is_empty())
                .map(secrecy::SecretString::from),
        },
        rate_limit: gateway::limits::RateLimit::new(
            args.rate_limit_per_second,
            args.rate_limit_burst,
        ),
    };
    #[cfg(feature = "fakes")]
    if let Some(demo) = &demo {
        settings.adapters = demo.adapters.clone();
        settings.outbound = demo.outbound();
        settings.data_dir = demo.data_dir();
    }
    if !args.demo {
        // The one place the configuration's variables are read.
        settings.adapters =
            adapters::config::AdaptersConfig::load_with(args.config.as_deref(), |name| {
                std::env::var(name).ok()
            })?;
        for reason in settings.adapters.unavailable.values() {
            tracing::info!("{reason}");
        }
    }
    #[cfg(feature = "fakes")]
    let data_dir = settings.data_dir.clone();
    let app = Application::build(settings).await?;
    let address = app.local_addr()?;
    tracing::info!(
        backend = app.backend().name(),
        "listening on http://{address}"
    );
    #[cfg(feature = "fakes")]
    if let Some(demo) = &demo {
        let db = gateway::open_service_db(None, &data_dir).await?;
        let base = url::Url::parse(&format!("http://{address}/"))?;
        let serving = app.run_until_stopped(shutdown);
        let welcome = async {
            if let Err(error) = demo.welcome(&base, &db, &mut std::io::stdout()).await {
                tracing::error!("the demo could not be set up: {error:#}");
            }
            std::future::pending::<()>().await;
        };
        return tokio::select! {
            served = serving => served,
            () = welcome => Ok(()),
        };
    }
    app.run_until_stopped(shutdown).await
}
