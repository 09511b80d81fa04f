//! The Companion action worker end to end on the embedded stack against the fake providers:
//! tools that are not sensitive run at once, sensitive ones wait for a person or a rule, a
//! rejected action never reaches the provider, pushes are deduplicated by the action's id, a
//! non-repeatable push is never made twice, and a dead grant marks the integration.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adapters::actions::ActionWorker;
use adapters::credentials::CredentialService;
use database::lease::Leases;
use fakes::google::FakeGoogle;
use fakes::hubspot::FakeHubSpot;
use fakes::todoist::FakeTodoist;
use fakes::twilio::FakeTwilio;
use fakes::zendesk::FakeZendesk;

use adapters::provider::{Connection, Credentials};
use adapters::providers::{Endpoints, Providers};
use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use database::ServiceDb;
use domain::catalog::AppScope;
use domain::integration::ActionPayload;
use domain::integration::{Integration, IntegrationCommand, IntegrationEvent, Status};
use domain::testing::{as_user, connect_command};
use domain::{ActionId, IntegrationId, Role, RuleId, StreamName};
use eventstore::waiting::eventually;
use eventstore::SledEventStore;
use secrecy::SecretString;
use serde_json::{json, Value};
use url::Url;

const WAIT: Duration = Duration::from_secs(20);
const SID: &str = "AC0123456789abcdef0123456789abcdef";

struct World {
    _dir: tempfile::TempDir,
    repo: Arc<Repository>,
    db: ServiceDb,
    vault: Arc<Vault>,
    hubspot: FakeHubSpot,
    twilio: FakeTwilio,
    zendesk: FakeZendesk,
    todoist: FakeTodoist,
    google: FakeGoogle,
    providers: Providers,
    worker: ActionWorker,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SledEventStore::open(dir.path().join("events")).unwrap();
        let repo = Arc::new(Repository::new(Arc::new(store)));
        let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
            .await
            .unwrap();
        let vault = Arc::new(Vault::new(db.clone(), MasterKey::generate()));
        let hubspot = FakeHubSpot::start(3, 0).await.unwrap();
        let twilio = FakeTwilio::start(SID, "tw-token", 0, 0).await.unwrap();
        let zendesk = FakeZendesk::start("acme", "agent@acme.com", "zd-token", 0, 0)
            .await
            .unwrap();
        let todoist = FakeTodoist::start("td-token", 0).await.unwrap();
        let google = FakeGoogle::start(0, 0).await.unwrap();
        let endpoints = Endpoints {
            hubspot_api: hubspot.server.base.clone(),
            google_calendar_api: google.server.base.join("calendar/v3/").unwrap(),
            gmail_api: google.server.base.join("gmail/v1/").unwrap(),
            todoist_api: todoist.server.base.join("api/v1/").unwrap(),
            zendesk_api_template: format!("{}{{subdomain}}/", zendesk.server.base),
            twilio_regions: BTreeMap::from([("us1".to_owned(), twilio.server.base.clone())]),
        };
        let providers = Providers::new(&endpoints, &common::http());
        let leases = Leases::new(db.clone(), Leases::process_holder());
        let hubspot_client = common::hubspot_client(&hubspot);
        let credentials = CredentialService::new(
            repo.clone(),
            vault.clone(),
            leases.clone(),
            BTreeMap::from([("hubspot".to_owned(), hubspot_client)]),
            adapters::http::ProviderHttp::default_client(),
            Url::parse("http://127.0.0.1/v1/oauth/callback").unwrap(),
        );
        let worker = ActionWorker::new(
            repo.clone(),
            db.clone(),
            vault.clone(),
            Arc::new(credentials),
            providers.clone(),
            leases,
        );
        {
            let worker = worker.clone();
            tokio::spawn(async move { worker.follow().await.unwrap() });
        }
        Self {
            _dir: dir,
            repo,
            db,
            vault,
            hubspot,
            twilio,
            zendesk,
            todoist,
            google,
            providers,
            worker,
        }
    }

    async fn connect(
        &self,
        app: &str,
        scope: AppScope,
        setup: &[(&str, &str)],
        credentials: Credentials,
    ) -> IntegrationId {
        let mut connect = connect_command(app, scope, setup);
        let id = connect.integration;
        connect.credential_ref = self.vault.put(id, &credentials.to_secret()).await.unwrap();
        command::lifecycle::connect(
            &self.repo,
            &as_user("ada", Role::Admin),
            connect,
            command::lifecycle::DEFAULT_ABANDON_AFTER,
        )
        .await
        .unwrap();
        id
    }

    async fn request(
        &self,
        id: IntegrationId,
        tool: &str,
        arguments: Value,
        rule: Option<RuleId>,
    ) -> ActionId {
        self.request_as(id, ActionId::new(), tool, arguments, rule)
            .await
    }

    /// Requests action `action_id`.
    async fn request_as(
        &self,
        id: IntegrationId,
        action_id: ActionId,
        tool: &str,
        arguments: Value,
        rule: Option<RuleId>,
    ) -> ActionId {
        // Sealed, as the API seals them.
        let arguments = ActionPayload::sealed(self.vault.seal(id, &arguments).await.unwrap());
        self.repo
            .execute::<Integration>(
                &StreamName::integration(id),
                &IntegrationCommand::RequestAction {
                    action_id,
                    tool: tool.into(),
                    arguments,
                    auto_approval: rule,
                },
                &as_user("ada", Role::Admin),
            )
            .await
            .unwrap();
        action_id
    }

    /// Zendesk connected for the workspace, with the API token the fake accepts.
    async fn connect_zendesk(&self) -> IntegrationId {
        self.connect(
            "zendesk",
            AppScope::Workspace,
            &[("subdomain", "acme"), ("email", "agent@acme.com")],
            Credentials::from_secrets(BTreeMap::from([(
                "api_token".to_owned(),
                SecretString::from("zd-token"),
            )])),
        )
        .await
    }

    async fn decide(&self, id: IntegrationId, command: IntegrationCommand) {
        self.repo
            .execute::<Integration>(
                &StreamName::integration(id),
                &command,
                &as_user("ada", Role::Admin),
            )
            .await
            .unwrap();
    }

    async fn events(&self, id: IntegrationId) -> Vec<IntegrationEvent> {
        self.repo
            .store()
            .read_stream(&StreamName::integration(id), 1, 10_000)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.decode::<IntegrationEvent>().unwrap())
            .collect()
    }

    /// Waits for the action's end: `Ok(result)` (unsealed) or `Err((error, retryable))`.
    async fn ended(&self, id: IntegrationId, action: ActionId) -> Result<Value, (String, bool)> {
        let ended = eventually(WAIT, "the action ends", || async {
            self.events(id)
                .await
                .into_iter()
                .find_map(|event| match event {
                    IntegrationEvent::ActionCompleted(done) if done.action_id == action => {
                        Some(Ok(done.result))
                    }
                    IntegrationEvent::ActionFailed(failed) if failed.action_id == action => {
                        Some(Err((failed.error, failed.retryable)))
                    }
                    _ => None,
                })
        })
        .await;
        match ended {
            Ok(payload) => {
                assert!(
                    matches!(payload, ActionPayload::Sealed(_)),
                    "the result is kept sealed"
                );
                Ok(self.vault.show(id, &payload).await.unwrap())
            }
            Err(failure) => Err(failure),
        }
    }
}

fn bearer(token: &str) -> Credentials {
    Credentials {
        access_token: Some(SecretString::from(token.to_owned())),
        ..Credentials::default()
    }
}

#[tokio::test]
async fn the_five_tools_of_the_issue_reach_their_providers() {
    let world = World::new().await;
    let (access, refresh) = world.hubspot.auth.issue(&["oauth"]);
    let hubspot = world
        .connect(
            "hubspot",
            AppScope::Workspace,
            &[],
            Credentials {
                refresh_token: Some(SecretString::from(refresh)),
                ..bearer(&access)
            },
        )
        .await;
    let contact = world
        .request(
            hubspot,
            "create_contact",
            json!({"properties": {"email": "new@example.com", "firstname": "New"}}),
            None,
        )
        .await;
    let created = world.ended(hubspot, contact).await.unwrap();
    assert!(created["id"].is_string(), "{created}");

    let (google_token, _) = world.google.auth.issue(&["openid"]);
    let calendar = world
        .connect(
            "google-calendar",
            AppScope::Personal,
            &[],
            bearer(&google_token),
        )
        .await;
    let event = world
        .request(
            calendar,
            "create_event",
            json!({"summary": "Review", "start": "2026-12-02T10:00:00Z", "end": "2026-12-02T11:00:00Z"}),
            None,
        )
        .await;
    world.ended(calendar, event).await.unwrap();
    assert_eq!(world.google.event_ids().len(), 1);

    let todoist = world
        .connect(
            "todoist",
            AppScope::Personal,
            &[],
            Credentials::from_secrets(BTreeMap::from([(
                "api_token".to_owned(),
                SecretString::from("td-token"),
            )])),
        )
        .await;
    let task = world
        .request(
            todoist,
            "create_task",
            json!({"content": "Follow up"}),
            None,
        )
        .await;
    world.ended(todoist, task).await.unwrap();
    assert_eq!(world.todoist.active(), ["Follow up"]);

    let zendesk = world.connect_zendesk().await;
    let ticket = world
        .request(
            zendesk,
            "create_ticket",
            json!({"subject": "Refund", "body": "Please refund order 7"}),
            None,
        )
        .await;
    world.ended(zendesk, ticket).await.unwrap();
    assert_eq!(world.zendesk.ticket_subjects(), ["Refund"]);

    let twilio = world
        .connect(
            "twilio",
            AppScope::Workspace,
            &[("account_sid", SID), ("region", "us1")],
            Credentials::from_secrets(BTreeMap::from([(
                "auth_token".to_owned(),
                SecretString::from("tw-token"),
            )])),
        )
        .await;
    // Sensitive: nothing is sent until someone approves.
    let sms = world
        .request(
            twilio,
            "send_sms",
            json!({"to": "+14155552345", "from": "+14155550000", "body": "Running late"}),
            None,
        )
        .await;
    let waiting = world.events(twilio).await;
    assert!(matches!(waiting.last(), Some(IntegrationEvent::ActionRequested(r)) if r.sensitive));
    world.worker.wait_idle().await;
    assert!(world.twilio.sent().is_empty());
    world
        .decide(
            twilio,
            IntegrationCommand::ApproveAction {
                action_id: sms,
                reason: Some("ok".into()),
            },
        )
        .await;
    let sent = world.ended(twilio, sms).await.unwrap();
    assert_eq!(sent["status"], "queued");
    assert_eq!(world.twilio.sent(), ["Running late"]);

    // An auto-approval rule lets the next one through at once; a rejected one never goes.
    let ruled = world
        .request(
            twilio,
            "send_sms",
            json!({"to": "+14155552345", "from": "+14155550000", "body": "On my way"}),
            Some(RuleId::new()),
        )
        .await;
    world.ended(twilio, ruled).await.unwrap();
    let rejected = world
        .request(
            twilio,
            "send_sms",
            json!({"to": "+14155552345", "from": "+14155550000", "body": "Never"}),
            None,
        )
        .await;
    world
        .decide(
            twilio,
            IntegrationCommand::RejectAction {
                action_id: rejected,
                reason: Some("not now".into()),
            },
        )
        .await;
    world.worker.wait_idle().await;
    assert_eq!(world.twilio.sent(), ["Running late", "On my way"]);
}

#[tokio::test]
async fn a_push_that_went_through_before_a_crash_is_not_repeated() {
    let world = World::new().await;
    let secrets = |name: &str, value: &str| {
        Credentials::from_secrets(BTreeMap::from([(
            name.to_owned(),
            SecretString::from(value.to_owned()),
        )]))
    };
    let zendesk = world.connect_zendesk().await;
    // The ticket action is requested while no worker runs pushes for it yet... as if a
    // previous process had pushed it and died before recording the outcome: the provider
    // holds the ticket under the action's id as idempotency key.
    let action = ActionId::new();
    let setup = BTreeMap::from([
        ("subdomain".to_owned(), "acme".to_owned()),
        ("email".to_owned(), "agent@acme.com".to_owned()),
    ]);
    let key = secrets("api_token", "zd-token");
    let arguments = json!({"subject": "Once", "body": "only once"});
    world
        .providers
        .get("zendesk")
        .unwrap()
        .push(
            Connection {
                setup: &setup,
                credentials: &key,
            },
            "create_ticket",
            &arguments,
            &action.to_string(),
        )
        .await
        .unwrap();
    world
        .repo
        .execute::<Integration>(
            &StreamName::integration(zendesk),
            &IntegrationCommand::RequestAction {
                action_id: action,
                tool: "create_ticket".into(),
                arguments: ActionPayload::Plain(arguments),
                auto_approval: None,
            },
            &as_user("ada", Role::Admin),
        )
        .await
        .unwrap();
    world.ended(zendesk, action).await.unwrap();
    assert_eq!(
        world.zendesk.ticket_subjects(),
        ["Once"],
        "deduplicated by the key"
    );

    // An SMS whose earlier attempt was marked: its outcome is unknown, so it fails rather than
    // risk a second text.
    let twilio = world
        .connect(
            "twilio",
            AppScope::Workspace,
            &[("account_sid", SID), ("region", "us1")],
            secrets("auth_token", "tw-token"),
        )
        .await;
    let sms = ActionId::new();
    let other_process = Leases::new(world.db.clone(), "a process that died");
    assert!(other_process
        .try_acquire(&format!("attempt:{sms}"), Duration::from_secs(3600))
        .await
        .unwrap());
    world
        .repo
        .execute::<Integration>(
            &StreamName::integration(twilio),
            &IntegrationCommand::RequestAction {
                action_id: sms,
                tool: "send_sms".into(),
                arguments: ActionPayload::Plain(
                    json!({"to": "+14155552345", "from": "+14155550000", "body": "x"}),
                ),
                auto_approval: Some(RuleId::new()),
            },
            &as_user("ada", Role::Admin),
        )
        .await
        .unwrap();
    let (error, retryable) = world.ended(twilio, sms).await.unwrap_err();
    assert!(error.contains("not repeated"), "{error}");
    assert!(!retryable);
    assert!(world.twilio.sent().is_empty());
}

#[tokio::test]
async fn an_action_whose_lease_a_dead_process_left_is_performed_when_that_lease_runs_out() {
    let world = World::new().await;
    let zendesk = world.connect_zendesk().await;
    // A process took the action and died before pushing it: its lease stands a while.
    let action = ActionId::new();
    let dead = Leases::new(world.db.clone(), "a process that died");
    let left_for = Duration::from_secs(3);
    assert!(dead
        .try_acquire(&format!("action:{action}"), left_for)
        .await
        .unwrap());
    let held_since = std::time::Instant::now();
    world
        .request_as(
            zendesk,
            action,
            "create_ticket",
            json!({"subject": "Late", "body": "but done"}),
            None,
        )
        .await;
    world.ended(zendesk, action).await.unwrap();
    assert!(
        held_since.elapsed() >= left_for,
        "performed while another holder's lease stood"
    );
    assert_eq!(world.zendesk.ticket_subjects(), ["Late"]);
}

#[tokio::test]
async fn a_revoked_grant_fails_the_action_and_marks_the_integration() {
    let world = World::new().await;
    let (access, refresh) = world.hubspot.auth.issue(&["oauth"]);
    let hubspot = world
        .connect(
            "hubspot",
            AppScope::Workspace,
            &[],
            Credentials {
                refresh_token: Some(SecretString::from(refresh)),
                ..bearer(&access)
            },
        )
        .await;
    world.hubspot.auth.revoke_everything();
    let action = world
        .request(hubspot, "search_contacts", json!({"query": "First1"}), None)
        .await;
    let (error, retryable) = world.ended(hubspot, action).await.unwrap_err();
    assert!(!retryable, "{error}");
    let state = world
        .repo
        .load::<Integration>(&StreamName::integration(hubspot))
        .await
        .unwrap()
        .state;
    assert_eq!(state.status, Status::NeedsReauth);
}
