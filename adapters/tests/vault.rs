//! The credential vault on SQLite and PostgreSQL: secrets round-trip, never appear in the
//! database in the clear, die with their integration's data key, survive a master-key rotation,
//! and do not decrypt when moved between rows or read with another master key.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;

use adapters::vault::{Keyring, MasterKey, Vault, VaultError};
use database::ServiceDb;
use domain::IntegrationId;
use secrecy::{ExposeSecret, SecretString};

async fn databases(dir: &std::path::Path) -> Vec<ServiceDb> {
    vec![
        ServiceDb::open_sqlite(&dir.join("read.db")).await.unwrap(),
        ServiceDb::connect_postgres(&database::test_support::postgres_database().await)
            .await
            .unwrap(),
    ]
}

/// Everything the vault's tables hold, as text.
async fn stored(db: &ServiceDb) -> String {
    let sql =
        "SELECT integration_id || ' ' || wrapped_key || ' ' || master_key_id FROM vault_keys \
               UNION ALL SELECT reference || ' ' || ciphertext FROM vault_secrets";
    let rows: Vec<String> = match db {
        ServiceDb::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        ServiceDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
    };
    rows.join("\n")
}

#[tokio::test]
async fn secrets_round_trip_encrypted_and_die_with_their_data_key() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let vault = Vault::new(db.clone(), MasterKey::generate());
        let (crm, mail) = (IntegrationId::new(), IntegrationId::new());
        let token = SecretString::from("hubspot-access-7f3a9c".to_owned());
        let refresh = SecretString::from("hubspot-refresh-51d0e2".to_owned());
        let key = SecretString::from("gmail-token-a8b8c8".to_owned());
        let token_ref = vault.put(crm, &token).await.unwrap();
        let refresh_ref = vault.put(crm, &refresh).await.unwrap();
        let key_ref = vault.put(mail, &key).await.unwrap();
        assert!(token_ref.0.starts_with(&format!("vault:{crm}:")));
        assert_ne!(token_ref, refresh_ref);
        assert_eq!(
            vault.get(&token_ref).await.unwrap().expose_secret(),
            "hubspot-access-7f3a9c"
        );
        assert_eq!(
            vault.get(&refresh_ref).await.unwrap().expose_secret(),
            "hubspot-refresh-51d0e2"
        );
        let everything = stored(&db).await;
        for secret in ["hubspot-access", "hubspot-refresh", "gmail-token", "7f3a9c"] {
            assert!(
                !everything.contains(secret),
                "{secret} is stored in the clear"
            );
        }

        assert!(vault.shred(crm).await.unwrap());
        for reference in [&token_ref, &refresh_ref] {
            match vault.get(reference).await {
                Err(VaultError::Shredded(id)) => assert_eq!(id, crm.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert!(!vault.shred(crm).await.unwrap(), "nothing left to shred");
        assert_eq!(
            vault.get(&key_ref).await.unwrap().expose_secret(),
            "gmail-token-a8b8c8",
            "another integration keeps its secrets"
        );
        let unknown = domain::CredentialRef("vault:nonsense".into());
        assert!(matches!(
            vault.get(&unknown).await,
            Err(VaultError::UnknownReference(_))
        ));
    }
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let vault = Vault::new(db.clone(), MasterKey::generate());
        let id = IntegrationId::new();
        let first = vault
            .put(id, &SecretString::from("first".to_owned()))
            .await
            .unwrap();
        let second = vault
            .put(id, &SecretString::from("second".to_owned()))
            .await
            .unwrap();
        // Someone with write access to the database copies one ciphertext over the other.
        let copy = "UPDATE vault_secrets SET ciphertext = \
                    (SELECT ciphertext FROM vault_secrets WHERE reference = $1) WHERE reference = $2";
        match &db {
            ServiceDb::Sqlite(pool) => sqlx::query(copy)
                .bind(&first.0)
                .bind(&second.0)
                .execute(pool)
                .await
                .map(drop)
                .unwrap(),
            ServiceDb::Postgres(pool) => sqlx::query(copy)
                .bind(&first.0)
                .bind(&second.0)
                .execute(pool)
                .await
                .map(drop)
                .unwrap(),
        }
        assert!(matches!(
            vault.get(&second).await,
            Err(VaultError::Corrupt(_))
        ));
        assert_eq!(vault.get(&first).await.unwrap().expose_secret(), "first");
    }
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_every_data_key_and_retires_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let old = MasterKey::generate();
        let old_text = old.to_base64();
        let vault = Vault::new(db.clone(), old);
        let mut references = Vec::new();
        for n in 0..5 {
            let secret = SecretString::from(format!("secret-{n}"));
            references.push(vault.put(IntegrationId::new(), &secret).await.unwrap());
        }
        let new = MasterKey::generate();
        let new_id = new.id().to_owned();
        let rewrapped = vault.rotate_to(&new).await.unwrap();
        assert_eq!(rewrapped, 5);
        for (n, reference) in references.iter().enumerate() {
            assert_eq!(
                vault.get(reference).await.unwrap().expose_secret(),
                &format!("secret-{n}")
            );
        }
        assert!(stored(&db).await.contains(&new_id));
        // The old key no longer opens anything, and says why.
        let stale = Vault::new(
            db.clone(),
            MasterKey::from_base64(old_text.expose_secret()).unwrap(),
        );
        match stale.get(&references[0]).await {
            Err(error @ VaultError::WrongMasterKey { .. }) => {
                assert!(error.to_string().contains(&new_id));
                assert!(!error.to_string().contains(old_text.expose_secret()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn no_data_key_is_wrapped_under_a_key_a_rotation_has_begun_to_retire() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        // A service started with the old key alone, beside the rotating command.
        let service = Vault::new(db.clone(), old.clone());
        let before = service
            .put(
                IntegrationId::new(),
                &SecretString::from("before".to_owned()),
            )
            .await
            .unwrap();
        let rotator = Vault::with_keyring(db.clone(), Keyring::fixed(vec![old.clone()]));
        rotator.begin_rotation(&new).await.unwrap();
        // The service cannot wrap under the new key, so it stores nothing rather than wrap
        // under the retiring one.
        let refused = service
            .put(
                IntegrationId::new(),
                &SecretString::from("during".to_owned()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, VaultError::CurrentKeyNotHeld { current } if current == new.id()),
            "{refused:?}"
        );
        assert!(!stored(&db).await.contains("during"));
        // What it had still opens while the re-wrap has not reached it, and after.
        assert_eq!(
            service.get(&before).await.unwrap().expose_secret(),
            "before"
        );
        assert_eq!(rotator.rewrap(&|_| {}).await.unwrap(), 1);
        assert_eq!(rotator.finish_rotation().await.unwrap(), 1);
        let states = rotator.master_keys().await.unwrap();
        assert!(states
            .iter()
            .any(|key| key.id == new.id() && key.state == "current"));
        assert!(states
            .iter()
            .any(|key| key.id == old.id() && key.state == "retired"));
        let updated = Vault::new(db.clone(), new.clone());
        assert_eq!(
            updated.get(&before).await.unwrap().expose_secret(),
            "before"
        );
    }
}

#[tokio::test]
async fn a_service_reading_the_key_file_follows_a_rotation_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
        .await
        .unwrap();
    let path = dir.path().join("master.key");
    let service = Arc::new(Vault::with_keyring(
        db.clone(),
        Keyring::load_or_create(&path, None).unwrap(),
    ));
    let old = MasterKey::load_or_create(&path).unwrap();
    let first = service
        .put(
            IntegrationId::new(),
            &SecretString::from("first".to_owned()),
        )
        .await
        .unwrap();
    // The rotation's first step: the next key is kept beside the file, then made current.
    let new = MasterKey::generate();
    new.write_new(&Keyring::next_path(&path)).unwrap();
    let rotator = Vault::with_keyring(db.clone(), Keyring::fixed(vec![old]));
    rotator.begin_rotation(&new).await.unwrap();
    let during = service
        .put(
            IntegrationId::new(),
            &SecretString::from("during".to_owned()),
        )
        .await
        .unwrap();
    assert!(stored(&db).await.lines().any(|row| row.ends_with(new.id())));
    rotator.rewrap(&|_| {}).await.unwrap();
    std::fs::rename(Keyring::next_path(&path), &path).unwrap();
    rotator.finish_rotation().await.unwrap();
    for (reference, text) in [(&first, "first"), (&during, "during")] {
        assert_eq!(service.get(reference).await.unwrap().expose_secret(), text);
    }
    let restarted = Vault::with_keyring(db, Keyring::load_or_create(&path, None).unwrap());
    for (reference, text) in [(&first, "first"), (&during, "during")] {
        assert_eq!(
            restarted.get(reference).await.unwrap().expose_secret(),
            text
        );
    }
}

#[cfg(unix)]
#[test]
fn the_master_key_file_is_created_private_and_a_readable_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let created = MasterKey::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(again.id(), created.id(), "the same key is read back");
    assert!(
        !format!("{created:?}").contains(created.to_base64().expose_secret()),
        "Debug never shows the key"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = MasterKey::load_or_create(&path).unwrap_err().to_string();
    assert!(refused.contains("chmod 600"), "{refused}");
    assert!(!refused.contains(created.to_base64().expose_secret()));

    assert!(MasterKey::from_base64("not base64!").is_err());
    assert!(MasterKey::from_base64("c2hvcnQ=")
        .unwrap_err()
        .to_string()
        .contains("not 32"));
}

/// Rows of the vault's data keys and secrets.
async fn vault_rows(db: &ServiceDb) -> (i64, i64) {
    let sql = "SELECT (SELECT COUNT(*) FROM vault_keys), (SELECT COUNT(*) FROM vault_secrets)";
    match db {
        ServiceDb::Sqlite(pool) => sqlx::query_as(sql).fetch_one(pool).await.unwrap(),
        ServiceDb::Postgres(pool) => sqlx::query_as(sql).fetch_one(pool).await.unwrap(),
    }
}

#[tokio::test]
async fn a_shredded_integrations_key_is_never_created_again() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let vault = Vault::new(db.clone(), MasterKey::generate());
        let crm = IntegrationId::new();
        let reference = vault
            .put(crm, &SecretString::from("access-1".to_owned()))
            .await
            .unwrap();
        let person = serde_json::json!({"email": "pat@example.com"});
        let sealed = vault.seal(crm, &person).await.unwrap();
        let payload = domain::integration::ActionPayload::sealed(sealed.clone());
        assert_eq!(vault.show(crm, &payload).await.unwrap(), person);

        assert!(vault.shred(crm).await.unwrap());
        // A straggler — a callback finished after the delete, a seal racing it — finds the
        // vault closed: nothing is stored, and no fresh key makes old ciphertexts "corrupt".
        for attempt in [
            vault
                .put(crm, &SecretString::from("access-2".to_owned()))
                .await
                .map(drop),
            vault.seal(crm, &person).await.map(drop),
        ] {
            assert!(
                matches!(&attempt, Err(VaultError::Shredded(id)) if *id == crm.to_string()),
                "{attempt:?}"
            );
        }
        assert_eq!(vault_rows(&db).await, (0, 0));
        assert!(matches!(
            vault.get(&reference).await,
            Err(VaultError::Shredded(_))
        ));
        assert_eq!(
            vault.show(crm, &payload).await.unwrap(),
            serde_json::json!({"shredded": true, "bytes": sealed.bytes}),
            "a shredded payload shows as shredded, not as an error"
        );
        assert!(
            !vault.shred(crm).await.unwrap(),
            "shredding twice is harmless"
        );

        // Other integrations are untouched, and a discarded secret goes alone.
        let mail = IntegrationId::new();
        let kept = vault
            .put(mail, &SecretString::from("kept".to_owned()))
            .await
            .unwrap();
        let refused = vault
            .put(mail, &SecretString::from("refused".to_owned()))
            .await
            .unwrap();
        vault.discard(&refused).await.unwrap();
        assert!(matches!(
            vault.get(&refused).await,
            Err(VaultError::UnknownReference(_))
        ));
        assert_eq!(vault.get(&kept).await.unwrap().expose_secret(), "kept");
    }
}

#[tokio::test]
async fn puts_racing_a_shredding_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let vault = Arc::new(Vault::new(db.clone(), MasterKey::generate()));
        for _ in 0..20 {
            let crm = IntegrationId::new();
            vault
                .put(crm, &SecretString::from("first".to_owned()))
                .await
                .unwrap();
            let puts: Vec<_> = (0..4)
                .map(|n| {
                    let vault = vault.clone();
                    tokio::spawn(async move {
                        vault
                            .put(crm, &SecretString::from(format!("late-{n}")))
                            .await
                    })
                })
                .collect();
            vault.shred(crm).await.unwrap();
            for put in puts {
                let _ = put.await.unwrap();
            }
            assert_eq!(
                vault_rows(&db).await,
                (0, 0),
                "whatever order they ran in, the shredding wins"
            );
        }
    }
}

/// A database an older release left: everything but the record of shredded integrations,
/// with a deleted integration whose data key a straggler created again.
#[tokio::test]
async fn a_vault_an_older_release_wrote_is_upgraded_and_shreds_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let (live, old) = (IntegrationId::new(), IntegrationId::new());
    let key = MasterKey::generate();
    {
        let db = ServiceDb::open_sqlite(&path).await.unwrap();
        let vault = Vault::new(db.clone(), key.clone());
        vault
            .put(live, &SecretString::from("live".to_owned()))
            .await
            .unwrap();
        vault
            .put(old, &SecretString::from("old".to_owned()))
            .await
            .unwrap();
        let ServiceDb::Sqlite(pool) = &db else {
            unreachable!()
        };
        sqlx::query("DROP TABLE vault_shredded")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE description LIKE '%vault shredded%'")
            .execute(pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let db = ServiceDb::open_sqlite(&path).await.unwrap();
    let vault = Vault::new(db.clone(), key);
    let ServiceDb::Sqlite(pool) = &db else {
        unreachable!()
    };
    let migrated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE description LIKE '%vault shredded%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(migrated, 1, "the upgrade ran");
    assert!(vault.shred(old).await.unwrap());
    assert!(matches!(
        vault.put(old, &SecretString::from("late".to_owned())).await,
        Err(VaultError::Shredded(_))
    ));
    let secrets: Vec<String> = sqlx::query_scalar("SELECT reference FROM vault_secrets")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(secrets.len(), 1);
    assert!(secrets[0].starts_with(&format!("vault:{live}:")));
}
