//! Leases on both databases, with a clock moved by hand: one holder at a time, a renewal by the
//! holder, a lapsed lease taken over, a released one free at once — without waiting for time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use database::lease::{Clock, Leases};
use database::ServiceDb;

const TTL: Duration = Duration::from_secs(30);

async fn one_holder_at_a_time(db: ServiceDb) {
    let clock = Clock::manual();
    let first = Leases::new(db.clone(), "first").with_clock(clock.clone());
    let second = Leases::new(db.clone(), "second").with_clock(clock.clone());

    assert!(first.try_acquire("sync:1", TTL).await.unwrap());
    assert!(!second.try_acquire("sync:1", TTL).await.unwrap(), "held");
    assert_eq!(
        second.holder_of("sync:1").await.unwrap().as_deref(),
        Some("first")
    );
    assert!(
        second.try_acquire("sync:2", TTL).await.unwrap(),
        "another lease is free"
    );

    // The holder renews before the lease lapses: it stays its own.
    clock.advance(TTL - Duration::from_secs(1));
    assert!(first.try_acquire("sync:1", TTL).await.unwrap());
    clock.advance(Duration::from_secs(2));
    assert!(!second.try_acquire("sync:1", TTL).await.unwrap(), "renewed");

    // Unrenewed past its expiry, it lapses and another holder takes it over.
    clock.advance(TTL + Duration::from_millis(1));
    assert_eq!(second.holder_of("sync:1").await.unwrap(), None, "lapsed");
    assert!(second.try_acquire("sync:1", TTL).await.unwrap());
    assert!(
        !first.try_acquire("sync:1", TTL).await.unwrap(),
        "taken over"
    );

    // A released lease is free at once; releasing another's lease does nothing.
    first.release("sync:1").await.unwrap();
    assert_eq!(
        first.holder_of("sync:1").await.unwrap().as_deref(),
        Some("second")
    );
    second.release("sync:1").await.unwrap();
    assert!(first.try_acquire("sync:1", TTL).await.unwrap());
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_lapses_or_is_released_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = ServiceDb::open_sqlite(&dir.path().join("service.db"))
        .await
        .unwrap();
    one_holder_at_a_time(db).await;
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_lapses_or_is_released_on_postgresql() {
    let url = database::test_support::postgres_database().await;
    let db = ServiceDb::connect_postgres(&url).await.unwrap();
    one_holder_at_a_time(db).await;
}
