//! `harmony vault …`: operations on the credential vault.

use adapters::vault::{MasterKey, Vault, MASTER_KEY_ENV};
use anyhow::Context;

use crate::cli::RotateArgs;
use crate::{master_key_path, open_read_db};

/// `harmony vault rotate-master-key`: re-wraps every data key under the new key, then puts the
/// new key where the old one was read from (the master key file; with `HARMONY_MASTER_KEY`, the
/// operator replaces the variable, and the command says so).
pub async fn rotate(args: &RotateArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let storage = &args.storage;
    let path = master_key_path(&storage.data_dir);
    let from_env = std::env::var_os(MASTER_KEY_ENV).is_some();
    if !from_env && !path.is_file() {
        anyhow::bail!(
            "there is no master key at {} (nor in {MASTER_KEY_ENV}): nothing to rotate",
            path.display()
        );
    }
    let old = MasterKey::load_or_create(&path).context("while reading the current master key")?;
    if from_env && args.new_key_file.is_none() {
        anyhow::bail!(
            "the master key comes from {MASTER_KEY_ENV}: give the new one with --new-key-file, so \
             that it is never printed"
        );
    }
    let new = match (&args.new_key_file, args.generate) {
        (Some(file), _) => MasterKey::load_or_create(file)
            .with_context(|| format!("while reading the new master key from {}", file.display()))?,
        (None, _) => MasterKey::generate(),
    };
    if new.id() == old.id() {
        anyhow::bail!("the new master key is the current one");
    }
    let db = open_read_db(storage.database_url.as_deref(), &storage.data_dir).await?;
    let (vault, rewrapped) = Vault::new(db.clone(), old)
        .rotate_master(new)
        .await
        .context("while re-wrapping the data keys")?;
    db.close().await;
    let new_id = vault.master_key().id();
    if from_env {
        writeln!(
            out,
            "re-wrapped {rewrapped} data keys under master key {new_id}; set {MASTER_KEY_ENV} to the new key in every process before starting them"
        )?;
    } else {
        // The new key goes into place atomically: a new file beside it, then a rename.
        let next = path.with_extension("key.new");
        let _ = std::fs::remove_file(&next);
        vault.master_key().write_new(&next)?;
        std::fs::rename(&next, &path)
            .with_context(|| format!("while putting the new key at {}", path.display()))?;
        writeln!(
            out,
            "re-wrapped {rewrapped} data keys under master key {new_id}, now in {}",
            path.display()
        )?;
    }
    Ok(())
}
