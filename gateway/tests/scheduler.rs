//! The scheduler: an integration whose schedule says it is due gets one incremental
//! `SyncRequested` by the system, read from Installed; one whose schedule is off never does.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use adapters::vault::{MasterKey, Vault};
use command::repository::Repository;
use database::lease::Leases;
use database::ServiceDb;
use domain::integration::{
    Integration, IntegrationCommand, IntegrationEvent, SyncKind, SyncTrigger,
};
use domain::testing::as_user;
use domain::{Role, StreamName, Timestamp};
use eventstore::{EventStore, SledEventStore};
use fakes::hubspot::FakeHubSpot;
use gateway::scheduler::Scheduler;
use projections::runner::Projection;

/// Brings Installed up to date with the whole log.
async fn project(store: &SledEventStore, db: &ServiceDb) {
    let events = store.read_all(1, 10_000).await.unwrap();
    Projection::Installed.apply(db, &events).await.unwrap();
}

#[tokio::test]
async fn the_scheduler_requests_an_incremental_sync_when_the_period_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let db = ServiceDb::open_sqlite(&dir.path().join("read.db"))
        .await
        .unwrap();
    let store = Arc::new(SledEventStore::open(dir.path().join("events")).unwrap());
    let repo = Arc::new(Repository::new(store.clone()));
    let vault = Vault::new(db.clone(), MasterKey::generate());
    let fake = FakeHubSpot::start(20, 5).await.unwrap();
    let admin = as_user("ada", Role::Admin);
    let id = fake
        .connect(
            &repo,
            &vault,
            &admin,
            &["oauth", "crm.objects.contacts.read"],
            None,
        )
        .await
        .unwrap();
    let stream = StreamName::integration(id);
    let schedule = |every_minutes| IntegrationCommand::ChangeSyncSchedule { every_minutes };
    repo.execute::<Integration>(&stream, &schedule(Some(5)), &admin)
        .await
        .unwrap();
    project(&store, &db).await;
    let scheduler = Scheduler::new(
        repo.clone(),
        db.clone(),
        Leases::new(db.clone(), "scheduler-test"),
        Duration::from_secs(60),
    );

    let now = Timestamp::now();
    assert!(
        scheduler.tick_once(now).await.unwrap().is_empty(),
        "connected just now: not due"
    );
    let later = Timestamp::from_unix_micros(now.unix_micros() + 6 * 60 * 1_000_000).unwrap();
    assert_eq!(scheduler.tick_once(later).await.unwrap(), [id]);
    let requests: Vec<_> = store
        .read_stream(&stream, 1, 1_000)
        .await
        .unwrap()
        .iter()
        .filter_map(|event| match event.decode::<IntegrationEvent>().unwrap() {
            Some(IntegrationEvent::SyncRequested(requested)) => Some(requested),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].kind, SyncKind::Incremental);
    assert_eq!(requests[0].trigger, SyncTrigger::Schedule);
    // A second tick in the same period asks for nothing more: the run is pending.
    project(&store, &db).await;
    assert!(scheduler.tick_once(later).await.unwrap().is_empty());

    // Off: never due.
    repo.execute::<Integration>(&stream, &schedule(None), &admin)
        .await
        .unwrap();
    project(&store, &db).await;
    let much_later = Timestamp::from_unix_micros(now.unix_micros() + 60 * 60 * 1_000_000).unwrap();
    assert!(scheduler.tick_once(much_later).await.unwrap().is_empty());
}
