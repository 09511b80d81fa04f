//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations` directory at compile time, and cargo does not watch it by itself. The path must
//! exist: a missing one makes cargo run this script, and rebuild everything above it, every time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
