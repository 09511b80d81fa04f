//! `harmony vault …`: operations on the credential vault.
//!
//! A master key rotation is safe to run beside running services and to kill at any moment:
//!
//! 1. The new key is made durable before anything depends on it: written to `master.key.next`
//!    beside the key file and synced (with `HARMONY_MASTER_KEY`, the operator keeps it in the
//!    file given with `--new-key-file`).
//! 2. The database makes it the current key and the old one retiring, in one transaction:
//!    from then on no process wraps a data key under the old key. Running services that use
//!    the data directory's key file read the next key when they meet it.
//! 3. Every data key is re-wrapped under the new key, one statement each.
//! 4. The new key takes the old one's place (`master.key.next` renamed over `master.key`,
//!    synced): only now is the old key gone, when nothing is wrapped under it.
//! 5. The old key is marked retired.
//!
//! Run again after a crash, the command finds the next key (or the retiring one) and carries
//! on from where it stopped.

use adapters::vault::{read_key_file, Keyring, MasterKey, Vault, MASTER_KEY_ENV};
use anyhow::Context;

use crate::cli::RotateArgs;
use crate::{master_key_path, open_service_db};

/// `harmony vault rotate-master-key`.
pub async fn rotate(args: &RotateArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let storage = &args.storage;
    let path = master_key_path(&storage.data_dir);
    let next_path = Keyring::next_path(&path);
    let from_env = storage.master_key.is_some();
    if !from_env && !path.is_file() {
        anyhow::bail!(
            "there is no master key at {} (nor in {MASTER_KEY_ENV}): nothing to rotate",
            path.display()
        );
    }
    let held = Keyring::load_or_create(&path, storage.master_key.as_ref())
        .context("while reading the current master key")?;
    let given = match &args.new_key_file {
        Some(file) => Some(
            read_key_file(file)
                .and_then(|key| {
                    key.ok_or_else(|| {
                        adapters::vault::VaultError::MasterKey(format!(
                            "{} does not exist",
                            file.display()
                        ))
                    })
                })
                .with_context(|| {
                    format!("while reading the new master key from {}", file.display())
                })?,
        ),
        None => None,
    };
    if from_env && given.is_none() {
        anyhow::bail!(
            "the master key comes from {MASTER_KEY_ENV}: give the new one with --new-key-file, so \
             that it is kept somewhere before anything is wrapped under it, and never printed"
        );
    }

    let db = open_service_db(storage.database_url.as_deref(), &storage.data_dir).await?;
    let vault = Vault::with_keyring(db.clone(), held.clone());
    let states = vault.master_keys().await?;
    let current = states.iter().find(|key| key.state == "current");
    let retiring = states.iter().any(|key| key.state == "retiring");

    // The new key: an interrupted rotation's, or the one given, or a new one.
    let pending_next = if from_env {
        None
    } else {
        read_key_file(&next_path).context("while reading the next master key")?
    };
    let resuming = pending_next.is_some();
    let new = match (pending_next, given) {
        (Some(next), Some(given)) if next.id() != given.id() => anyhow::bail!(
            "a rotation to master key {} was interrupted ({} holds it): run the command again \
             without --new-key-file to finish it first",
            next.id(),
            next_path.display()
        ),
        (Some(next), _) => {
            writeln!(
                out,
                "finishing the interrupted rotation to master key {}",
                next.id()
            )?;
            next
        }
        (None, Some(given)) => given,
        (None, None) => {
            let file_key = held.keys().first().map(|key| key.id().to_owned());
            if retiring && current.map(|key| key.id.clone()) == file_key {
                // The key file was put in place before the crash: only step 5 is left.
                vault.rewrap(&|_| {}).await?;
                vault.finish_rotation().await?;
                db.close().await;
                writeln!(
                    out,
                    "finished the interrupted rotation: master key {} is current",
                    file_key.unwrap_or_default()
                )?;
                return Ok(());
            }
            let generated = MasterKey::generate();
            // 1. Durable before anything is wrapped under it.
            generated
                .write_new(&next_path)
                .context("while keeping the new master key")?;
            generated
        }
    };
    if !resuming && !retiring && current.is_some_and(|key| key.id == new.id()) {
        anyhow::bail!("the new master key is the current one");
    }
    if let Some(current) = current {
        let known = current.id == new.id() || held.keys().iter().any(|k| k.id() == current.id);
        if !known {
            anyhow::bail!(
                "the vault's current master key is {}, which is neither the key given nor the \
                 current one: rotate with the key the vault uses",
                current.id
            );
        }
    }

    // 2. The new key is current; no data key is wrapped under the old one from now on.
    vault.begin_rotation(&new).await?;
    // 3. Every data key under the new key.
    let bar = indicatif::ProgressBar::new_spinner().with_message("re-wrapping data keys");
    let rewrapped = vault
        .rewrap(&|count| bar.set_position(count))
        .await
        .context("while re-wrapping the data keys")?;
    bar.finish_and_clear();
    // 4. The new key takes the old one's place.
    if !from_env {
        std::fs::rename(&next_path, &path)
            .with_context(|| format!("while putting the new key at {}", path.display()))?;
        command::keyfile::sync_parent(&path)
            .with_context(|| format!("while syncing {}", path.display()))?;
    }
    // 5. The old key is retired.
    vault.finish_rotation().await?;
    db.close().await;
    let new_id = new.id();
    if from_env {
        writeln!(
            out,
            "re-wrapped {rewrapped} data keys under master key {new_id}; set {MASTER_KEY_ENV} to \
             the new key in every process (processes given both keys, new first and \
             comma-separated, switch without a restart)"
        )?;
    } else {
        writeln!(
            out,
            "re-wrapped {rewrapped} data keys under master key {new_id}, now in {}",
            path.display()
        )?;
    }
    Ok(())
}
