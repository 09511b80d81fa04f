//! `harmony vault rotate-master-key` killed with SIGKILL at random points, run again, and run
//! with the master key in the environment: no credential is ever lost.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adapters::vault::{Keyring, MasterKey, Vault};
use database::ServiceDb;
use domain::{CredentialRef, IntegrationId};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

fn harmony() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_harmony"));
    command
        .env_remove("HARMONY_MASTER_KEY")
        .env_remove("HARMONY_DATABASE_URL");
    command
}

fn rotate(data_dir: &Path) -> Command {
    let mut command = harmony();
    command
        .args(["vault", "rotate-master-key", "--generate", "--data-dir"])
        .arg(data_dir);
    command
}

async fn open(data_dir: &Path) -> ServiceDb {
    ServiceDb::open_sqlite(&data_dir.join("read.db"))
        .await
        .unwrap()
}

/// Every secret opens with the keys on disk, as a service starting now would read them.
async fn every_secret_opens(data_dir: &Path, stored: &[(CredentialRef, String)]) {
    let db = open(data_dir).await;
    let keys = Keyring::load_or_create(&data_dir.join("master.key"), None).unwrap();
    let vault = Vault::with_keyring(db.clone(), keys);
    for (reference, text) in stored {
        let opened = vault.get(reference).await.unwrap_or_else(|error| {
            panic!("{} no longer opens: {error}", reference.0);
        });
        assert_eq!(opened.expose_secret(), text);
    }
    db.close().await;
}

async fn wrapped_under(db: &ServiceDb, key: &str) -> i64 {
    let ServiceDb::Sqlite(pool) = db else {
        unreachable!("SQLite here")
    };
    sqlx::query_scalar("SELECT COUNT(*) FROM vault_keys WHERE master_key_id = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[test]
fn a_rotation_killed_at_random_points_loses_no_credential() {
    const SECRETS: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(async {
        let db = open(data_dir).await;
        let keys = Keyring::load_or_create(&data_dir.join("master.key"), None).unwrap();
        let vault = Vault::with_keyring(db.clone(), keys);
        let mut stored = Vec::new();
        for n in 0..SECRETS {
            let text = format!("api-token-{n}");
            let secret = SecretString::from(text.clone());
            stored.push((
                vault.put(IntegrationId::new(), &secret).await.unwrap(),
                text,
            ));
        }
        db.close().await;
        stored
    });
    let next = Keyring::next_path(&data_dir.join("master.key"));
    let mut rng = rand::rng();
    let mut killed_mid_rewrap = 0;
    for round in 0..8 {
        let mut child = rotate(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Where to kill it: at once, once the next key is on disk, or after some data keys
        // are re-wrapped under it.
        let point = if round < 2 { round } else { 2 };
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited_early = runtime.block_on(async {
            match point {
                0 => false,
                1 => loop {
                    if next.exists() {
                        break false;
                    }
                    if child.try_wait().unwrap().is_some() {
                        break true;
                    }
                    assert!(Instant::now() < deadline, "the next key never appeared");
                    tokio::task::yield_now().await;
                },
                _ => {
                    let wanted = rng.random_range(1..SECRETS as i64);
                    let db = open(data_dir).await;
                    let outcome = loop {
                        if child.try_wait().unwrap().is_some() {
                            break true;
                        }
                        if let Ok(Some(key)) = adapters::vault::read_key_file(&next) {
                            if wrapped_under(&db, key.id()).await >= wanted {
                                break false;
                            }
                        }
                        assert!(Instant::now() < deadline, "the rotation made no progress");
                    };
                    db.close().await;
                    outcome
                }
            }
        });
        if !exited_early {
            child.kill().unwrap();
            if point == 2 {
                killed_mid_rewrap += 1;
            }
        }
        child.wait().unwrap();
        runtime.block_on(every_secret_opens(data_dir, &stored));
    }
    assert!(killed_mid_rewrap > 0, "some rounds were killed mid re-wrap");

    // Run to the end, it leaves one key, current, and nothing beside it.
    let output = rotate(data_dir).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!next.exists(), "the next key took the current one's place");
    runtime.block_on(async {
        let key = MasterKey::load_or_create(&data_dir.join("master.key")).unwrap();
        let db = open(data_dir).await;
        let vault = Vault::new(db.clone(), key.clone());
        let states = vault.master_keys().await.unwrap();
        let current: Vec<_> = states.iter().filter(|k| k.state == "current").collect();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].id, key.id());
        assert!(states.iter().all(|k| k.state != "retiring"), "{states:?}");
        assert_eq!(wrapped_under(&db, key.id()).await, SECRETS as i64);
        for (reference, text) in &stored {
            assert_eq!(vault.get(reference).await.unwrap().expose_secret(), text);
        }
        db.close().await;
    });
}

#[test]
fn with_the_key_in_the_environment_the_new_key_comes_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    let old = MasterKey::generate();
    let old_text = old.to_base64().expose_secret().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reference = runtime.block_on(async {
        let db = open(data_dir).await;
        let vault = Vault::new(db.clone(), old.clone());
        let reference = vault
            .put(
                IntegrationId::new(),
                &SecretString::from("twilio-auth-token".to_owned()),
            )
            .await
            .unwrap();
        db.close().await;
        reference
    });

    // Generating is refused: a key only the command knew would be lost with it.
    let output = rotate(data_dir)
        .env("HARMONY_MASTER_KEY", &old_text)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--new-key-file"));

    let new = MasterKey::generate();
    let new_file = data_dir.join("new.key");
    new.write_new(&new_file).unwrap();
    let output = harmony()
        .args(["vault", "rotate-master-key", "--new-key-file"])
        .arg(&new_file)
        .arg("--data-dir")
        .arg(data_dir)
        .env("HARMONY_MASTER_KEY", &old_text)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(new.id()) && said.contains("HARMONY_MASTER_KEY"),
        "{said}"
    );
    assert!(!said.contains(&old_text) && !said.contains(new.to_base64().expose_secret()));
    runtime.block_on(async {
        let db = open(data_dir).await;
        let vault = Vault::new(db.clone(), new);
        assert_eq!(
            vault.get(&reference).await.unwrap().expose_secret(),
            "twilio-auth-token"
        );
        db.close().await;
    });
}
