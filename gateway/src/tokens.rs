//! API tokens: each is scoped to a workspace, a user and a role, stored as its SHA-256 only,
//! shown once when created, and refused from the moment it is revoked. `harmony tokens
//! create|list|revoke` manages them.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use base64::Engine;
use database::{execute, fetch_all, Bind};
use domain::{Principal, Role, Timestamp, UserId, WorkspaceId};
use projections::{ServiceDb, ServiceDbError};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// What every token starts with, so that a leaked one is recognisable (and scannable).
pub const TOKEN_PREFIX: &str = "hst_";

/// A token just created: its id, and the secret itself, shown this once.
#[derive(Debug)]
pub struct Issued {
    pub id: String,
    pub token: SecretString,
}

/// A token as listed: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub workspace: String,
    pub user: String,
    pub role: String,
    pub label: String,
    pub created_at: String,
    pub revoked: bool,
}

/// The SHA-256 of a token, as stored; also what keys a caller's rate limit and idempotency keys.
pub(crate) fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether two secrets (or their hashes) are equal, compared in constant time: how long it
/// takes says nothing of where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Creates a token for `user` of `workspace` with `role`; an `unlimited` one is exempt from
/// the per-token rate limit.
pub async fn create(
    db: &ServiceDb,
    workspace: &WorkspaceId,
    user: &UserId,
    role: Role,
    label: &str,
    unlimited: bool,
) -> Result<Issued, ServiceDbError> {
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let id = format!("tok_{}", uuid::Uuid::now_v7().simple());
    execute(
        db,
        "INSERT INTO api_tokens (id, token_hash, workspace, user_id, role, label, created_at, \
         revoked_at, unlimited) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8)",
        &[
            Bind::Text(id.clone()),
            Bind::Text(hash(&token)),
            Bind::Text(workspace.to_string()),
            Bind::Text(user.to_string()),
            Bind::Text(role.to_string()),
            Bind::Text(label.to_owned()),
            Bind::Int(Timestamp::now().unix_micros()),
            Bind::Int(i64::from(unlimited)),
        ],
    )
    .await?;
    Ok(Issued {
        id,
        token: SecretString::from(token),
    })
}

type Row = (String, String, String, String, String, i64, Option<i64>);

/// Every token, or a workspace's, oldest first.
pub async fn list(
    db: &ServiceDb,
    workspace: Option<&WorkspaceId>,
) -> Result<Vec<TokenInfo>, ServiceDbError> {
    let rows: Vec<Row> = match workspace {
        Some(workspace) => fetch_all(
            db,
            "SELECT id, workspace, user_id, role, label, created_at, revoked_at FROM api_tokens \
                 WHERE workspace = $1 ORDER BY id",
            &[Bind::Text(workspace.to_string())],
        )
        .await?,
        None => fetch_all(
            db,
            "SELECT id, workspace, user_id, role, label, created_at, revoked_at FROM api_tokens \
                 ORDER BY id",
            &[],
        )
        .await?,
    };
    Ok(rows
        .into_iter()
        .map(
            |(id, workspace, user, role, label, created_at, revoked_at)| TokenInfo {
                id,
                workspace,
                user,
                role,
                label,
                created_at: Timestamp::from_unix_micros(created_at)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                revoked: revoked_at.is_some(),
            },
        )
        .collect())
}

/// Revokes a token: refused from now on, by every process serving `db` (a SQLite database
/// in `data_dir` is told through its [`RevocationMark`]). `false` when no live token has that
/// id.
pub async fn revoke(db: &ServiceDb, data_dir: &Path, id: &str) -> anyhow::Result<bool> {
    let changed = execute(
        db,
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        &[
            Bind::Int(Timestamp::now().unix_micros()),
            Bind::Text(id.to_owned()),
        ],
    )
    .await?;
    if changed > 0 && matches!(db, ServiceDb::Sqlite(_)) {
        RevocationMark::announce(data_dir).with_context(|| {
            format!(
                "token {id} is revoked, but the services running on {} could not be told: \
                 restart them",
                data_dir.display()
            )
        })?;
    }
    Ok(changed > 0)
}

/// How the processes serving one SQLite database learn at once that a token was revoked, in
/// any of them or by `harmony tokens revoke`: a file beside the database holding eight bytes,
/// rewritten with fresh ones after every revocation commits. A process may keep the tokens it
/// found live while the mark reads the same; one read of the mark (a `pread` of the page
/// cache) replaces a query per request. PostgreSQL, shared by processes on several machines,
/// has no mark: every request asks the database.
#[derive(Debug)]
pub struct RevocationMark {
    file: std::fs::File,
}

impl RevocationMark {
    const FILE: &'static str = "tokens.revoked";

    /// The mark of the database in `data_dir`, created if it is not there yet.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join(Self::FILE))?;
        Ok(Self { file })
    }

    /// What the mark reads now (zero before the first revocation).
    fn read(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut bytes = [0u8; 8];
        let mut filled = 0;
        while filled < bytes.len() {
            let read = self.file.read_at(&mut bytes[filled..], filled as u64)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        Ok(u64::from_le_bytes(bytes))
    }

    /// Rewrites the mark of the database in `data_dir` with fresh bytes: random, so that two
    /// revocations at once still change it.
    pub fn announce(data_dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mark = Self::open(data_dir)?;
        let fresh: u64 = rand::random::<u64>() | 1;
        mark.file.write_all_at(&fresh.to_le_bytes(), 0)
    }
}

/// The live tokens this process has looked up, each with the [`RevocationMark`] it was found
/// live under: a request whose token is here, under the mark as it reads now, needs no query.
/// Without a mark (PostgreSQL) every request asks the database.
#[derive(Debug)]
pub struct TokenCache {
    mark: Option<RevocationMark>,
    live: std::sync::Mutex<std::collections::HashMap<String, (u64, Authenticated)>>,
}

impl TokenCache {
    /// Entries kept at most; past it the cache starts over.
    const MAX: usize = 10_000;

    pub fn new(mark: Option<RevocationMark>) -> Self {
        Self {
            mark,
            live: std::sync::Mutex::default(),
        }
    }

    /// Who the token with SHA-256 `token_hash` speaks for, if it is still live.
    pub async fn authenticate_hash(
        &self,
        db: &ServiceDb,
        token_hash: &str,
    ) -> Result<Option<Authenticated>, ServiceDbError> {
        let Some(mark) = &self.mark else {
            return authenticate_hash(db, token_hash).await;
        };
        // Read before the query: a revocation that commits after the query moves the mark
        // after this reading, so the entry kept below is never taken for live past it.
        let now = mark
            .read()
            .map_err(|error| ServiceDbError::Sql(sqlx::Error::Io(error)))?;
        if let Some((at, authenticated)) =
            self.live.lock().expect("token cache lock").get(token_hash)
        {
            if *at == now {
                return Ok(Some(authenticated.clone()));
            }
        }
        let found = authenticate_hash(db, token_hash).await?;
        let mut live = self.live.lock().expect("token cache lock");
        match &found {
            Some(authenticated) => {
                if live.len() >= Self::MAX {
                    live.clear();
                }
                live.insert(token_hash.to_owned(), (now, authenticated.clone()));
            }
            None => {
                live.remove(token_hash);
            }
        }
        Ok(found)
    }
}

/// A live token, as presented.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub principal: Principal,
    /// Exempt from the per-token rate limit.
    pub unlimited: bool,
}

/// Who a presented token speaks for, if it is a live token.
pub async fn authenticate(
    db: &ServiceDb,
    presented: &str,
) -> Result<Option<Authenticated>, ServiceDbError> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    authenticate_hash(db, &hash(presented)).await
}

/// Who the token with SHA-256 `token_hash` speaks for, if it is still live.
pub async fn authenticate_hash(
    db: &ServiceDb,
    token_hash: &str,
) -> Result<Option<Authenticated>, ServiceDbError> {
    let rows: Vec<(String, String, String, i64)> = fetch_all(
        db,
        "SELECT workspace, user_id, role, unlimited FROM api_tokens WHERE token_hash = $1 \
         AND revoked_at IS NULL",
        &[Bind::Text(token_hash.to_owned())],
    )
    .await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|(workspace, user, role, unlimited)| {
            Some(Authenticated {
                principal: Principal {
                    workspace: workspace.parse().ok()?,
                    user: user.parse().ok()?,
                    role: role.parse().ok()?,
                },
                unlimited: unlimited != 0,
            })
        }))
}

/// `harmony tokens …`.
pub async fn run(command: &crate::cli::TokensCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::cli::TokensCommand;
    let storage = match command {
        TokensCommand::Create(args) => &args.storage,
        TokensCommand::List(args) => &args.storage,
        TokensCommand::Revoke(args) => &args.storage,
    };
    crate::create_private_dir(&storage.data_dir)?;
    let db = crate::open_service_db(storage.database_url.as_deref(), &storage.data_dir).await?;
    match command {
        TokensCommand::Create(args) => {
            let workspace: WorkspaceId = args
                .workspace
                .parse()
                .map_err(|e| anyhow::anyhow!("--workspace: {e}"))?;
            let user: UserId = args
                .user
                .parse()
                .map_err(|e| anyhow::anyhow!("--user: {e}"))?;
            let role: Role = args
                .role
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--role: {e}"))?;
            let issued = create(&db, &workspace, &user, role, &args.label, args.unlimited).await?;
            writeln!(out, "{}", issued.token.expose_secret())?;
            eprintln!(
                "token {} for {user} in {workspace} ({role}); it is shown this once",
                issued.id
            );
        }
        TokensCommand::List(args) => {
            let workspace = args
                .workspace
                .as_deref()
                .map(str::parse::<WorkspaceId>)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--workspace: {e}"))?;
            let tokens = list(&db, workspace.as_ref()).await?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&tokens)?)?;
            } else {
                writeln!(out, "id\tworkspace\tuser\trole\tcreated\tstate\tlabel")?;
                for token in tokens {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        token.id,
                        token.workspace,
                        token.user,
                        token.role,
                        token.created_at,
                        if token.revoked { "revoked" } else { "live" },
                        token.label
                    )?;
                }
            }
        }
        TokensCommand::Revoke(args) => {
            anyhow::ensure!(
                revoke(&db, &storage.data_dir, &args.id).await?,
                "no live token has the id {}",
                args.id
            );
            writeln!(out, "revoked {}", args.id)?;
        }
    }
    Ok(())
}
