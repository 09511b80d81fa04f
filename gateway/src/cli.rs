//! The `harmony` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Harmony Sync: the event-sourced back end of the Marketplace's integrations.
#[derive(Debug, Parser)]
#[command(name = "harmony", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (embedded: the event log on sled under --data-dir).
    Serve(ServeArgs),
    /// Measure a part of the system beside the raw engine underneath it.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the embedded event log and the service's other state live.
    #[arg(long, env = "HARMONY_DATA_DIR", default_value = "./harmony-data")]
    pub data_dir: PathBuf,
    /// The address to serve HTTP on.
    #[arg(long, env = "HARMONY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// The event log: durable appends with 1, 16 and 256 writers, batches of 100, replay.
    Eventstore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sled,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    pub suite: Suite,
    /// Print one JSON object and nothing else on standard output.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value = "sled")]
    pub backend: Backend,
    /// Where to put the benchmark's scratch data (a fresh temporary directory inside it);
    /// use a directory on the disk you want measured.
    #[arg(long, env = "HARMONY_BENCH_DIR")]
    pub dir: Option<PathBuf>,
    /// A tenth of the work: for a smoke test, not for figures.
    #[arg(long)]
    pub quick: bool,
}
