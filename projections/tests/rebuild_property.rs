//! For random lives of a few integrations, applying the log in random batch sizes gives the
//! same Installed and sync logs as one pass over it, on SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;

use command::lifecycle::{self, DEFAULT_ABANDON_AFTER};
use command::repository::Repository;
use domain::catalog::AppScope;
use domain::integration::{ConnectIntegration, ExpiryReason, RecordCounts, SyncKind};
use domain::{
    CommandContext, CredentialRef, IntegrationCommand, IntegrationId, Role, StreamName, SyncId,
};
use eventstore::{EventStore, SledEventStore};
use projections::runner::Projection;
use projections::ServiceDb;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    RequestSync(usize),
    StartSync(usize),
    Progress(usize, u8),
    Complete(usize),
    Fail(usize, bool),
    Expire(usize),
    Reauth(usize),
    Disconnect(usize),
    Delete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let which = 0..3usize;
    prop_oneof![
        3 => which.clone().prop_map(Step::RequestSync),
        3 => which.clone().prop_map(Step::StartSync),
        4 => (which.clone(), 1..5u8).prop_map(|(i, p)| Step::Progress(i, p)),
        2 => which.clone().prop_map(Step::Complete),
        2 => (which.clone(), any::<bool>()).prop_map(|(i, c)| Step::Fail(i, c)),
        1 => which.clone().prop_map(Step::Expire),
        1 => which.clone().prop_map(Step::Reauth),
        1 => which.clone().prop_map(Step::Disconnect),
        1 => which.prop_map(Step::Delete),
    ]
}

mod common;
use common::{system, views};

fn ctx(user: &str) -> CommandContext {
    common::as_user(user, Role::Admin)
}

/// Plays the steps through the domain; commands it refuses are simply not in the log.
async fn play(steps: &[Step]) -> (tempfile::TempDir, Arc<SledEventStore>, Vec<IntegrationId>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path().join("log")).unwrap());
    let repository = Repository::new(store.clone());
    let mut ids = Vec::new();
    for (app, scope, user) in [
        ("hubspot", AppScope::Workspace, "ada"),
        ("salesforce", AppScope::Workspace, "ada"),
        ("gmail", AppScope::Personal, "max"),
    ] {
        let mut setup = std::collections::BTreeMap::new();
        if app == "salesforce" {
            setup.insert(
                "instance_url".to_owned(),
                "https://acme.my.salesforce.com".to_owned(),
            );
        }
        let command = ConnectIntegration {
            integration: IntegrationId::new(),
            app: app.into(),
            scope,
            setup,
            granted_scopes: vec![],
            account_label: None,
            credential_ref: CredentialRef("vault:x:1".into()),
            token_expires_at: None,
        };
        let done = lifecycle::connect(&repository, &ctx(user), command, DEFAULT_ABANDON_AFTER)
            .await
            .unwrap();
        ids.push(done.state.profile.unwrap().id);
    }
    let owner = |i: usize| if i == 2 { "max" } else { "ada" };
    let mut syncs: Vec<Option<SyncId>> = vec![None; 3];
    for step in steps {
        let (i, command, context) = match step {
            Step::RequestSync(i) => {
                let id = SyncId::new();
                syncs[*i] = Some(id);
                (
                    *i,
                    IntegrationCommand::RequestSync {
                        claimed: false,
                        sync_id: id,
                        kind: SyncKind::Full,
                    },
                    ctx(owner(*i)),
                )
            }
            Step::StartSync(i) => {
                let Some(id) = syncs[*i] else { continue };
                (
                    *i,
                    IntegrationCommand::StartSync {
                        sync_id: id,
                        cursor: None,
                    },
                    system(),
                )
            }
            Step::Progress(i, page) => {
                let Some(id) = syncs[*i] else { continue };
                let counts = RecordCounts {
                    pulled: 10,
                    created: u64::from(*page),
                    updated: 1,
                    deleted: 0,
                };
                let command = IntegrationCommand::RecordSyncProgress {
                    sync_id: id,
                    object: "contacts".into(),
                    page: u32::from(*page),
                    counts,
                    cursor: None,
                };
                (*i, command, system())
            }
            Step::Complete(i) => {
                let Some(id) = syncs[*i] else { continue };
                (
                    *i,
                    IntegrationCommand::CompleteSync {
                        sync_id: id,
                        duration_ms: 7,
                        unrecorded: Default::default(),
                        detail: None,
                    },
                    system(),
                )
            }
            Step::Fail(i, retryable) => {
                let Some(id) = syncs[*i] else { continue };
                let command = IntegrationCommand::FailSync {
                    sync_id: id,
                    code: "upstream".into(),
                    message: "boom".into(),
                    retryable: *retryable,
                    unrecorded: Default::default(),
                    detail: None,
                };
                (*i, command, system())
            }
            Step::Expire(i) => (
                *i,
                IntegrationCommand::MarkCredentialsExpired {
                    reason: ExpiryReason::Expired,
                    detail: "x".into(),
                },
                system(),
            ),
            Step::Reauth(i) => (
                *i,
                IntegrationCommand::Reauthenticate {
                    credential_ref: CredentialRef("vault:x:2".into()),
                    granted_scopes: vec![],
                    expires_at: None,
                },
                ctx(owner(*i)),
            ),
            Step::Disconnect(i) => {
                let command = IntegrationCommand::Disconnect {
                    reason: "bye".into(),
                    token_revoked: false,
                };
                let _ = lifecycle::end(&repository, &ctx(owner(*i)), ids[*i], command).await;
                continue;
            }
            Step::Delete(i) => {
                let command = IntegrationCommand::Delete {
                    secrets_shredded: true,
                };
                let _ = lifecycle::end(&repository, &ctx(owner(*i)), ids[*i], command).await;
                continue;
            }
        };
        let _ = repository
            .execute::<domain::Integration>(&StreamName::integration(ids[i]), &command, &context)
            .await;
    }
    (dir, store, ids)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn batches_of_any_size_build_what_one_pass_builds(
        steps in proptest::collection::vec(step(), 0..40),
        cuts in proptest::collection::vec(1..7usize, 1..20),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (dir, store, ids) = play(&steps).await;
            let all = store.read_all(1, 100_000).await.unwrap();
            let one = ServiceDb::open_sqlite(&dir.path().join("one.db")).await.unwrap();
            let many = ServiceDb::open_sqlite(&dir.path().join("many.db")).await.unwrap();
            for projection in Projection::ALL {
                projection.apply(&one, &all).await.unwrap();
                let mut rest = &all[..];
                let mut cut = cuts.iter().cycle();
                while !rest.is_empty() {
                    let size = (*cut.next().unwrap()).min(rest.len());
                    projection.apply(&many, &rest[..size]).await.unwrap();
                    rest = &rest[size..];
                }
            }
            assert_eq!(views(&many, &["ada", "max"], &ids).await, views(&one, &["ada", "max"], &ids).await);
        });
    }
}
