//! API tokens: each is scoped to a workspace, a user and a role, stored as its SHA-256 only,
//! shown once when created, and refused from the moment it is revoked. `harmony tokens
//! create|list|revoke` manages them.

use std::io::Write;

use base64::Engine;
use database::{execute, fetch_all, Bind};
use domain::{Principal, Role, Timestamp, UserId, WorkspaceId};
use projections::{ReadDb, ReadDbError};
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

/// Creates a token for `user` of `workspace` with `role`; an `unlimited` one is exempt from
/// the per-token rate limit.
pub async fn create(
    db: &ReadDb,
    workspace: &WorkspaceId,
    user: &UserId,
    role: Role,
    label: &str,
    unlimited: bool,
) -> Result<Issued, ReadDbError> {
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
    db: &ReadDb,
    workspace: Option<&WorkspaceId>,
) -> Result<Vec<TokenInfo>, ReadDbError> {
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

/// Revokes a token: refused from now on. `false` when no live token has that id.
pub async fn revoke(db: &ReadDb, id: &str) -> Result<bool, ReadDbError> {
    let changed = execute(
        db,
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        &[
            Bind::Int(Timestamp::now().unix_micros()),
            Bind::Text(id.to_owned()),
        ],
    )
    .await?;
    Ok(changed > 0)
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
    db: &ReadDb,
    presented: &str,
) -> Result<Option<Authenticated>, ReadDbError> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    authenticate_hash(db, &hash(presented)).await
}

/// Who the token with SHA-256 `token_hash` speaks for, if it is still live.
pub async fn authenticate_hash(
    db: &ReadDb,
    token_hash: &str,
) -> Result<Option<Authenticated>, ReadDbError> {
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
    let db = crate::open_read_db(storage.database_url.as_deref(), &storage.data_dir).await?;
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
                revoke(&db, &args.id).await?,
                "no live token has the id {}",
                args.id
            );
            writeln!(out, "revoked {}", args.id)?;
        }
    }
    Ok(())
}
