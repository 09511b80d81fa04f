//! Following the log from a saved position: the one loop behind every background reader that
//! acts on events (the sync dispatcher, the action dispatcher, the purge of deleted
//! integrations).
//!
//! [`follow`] subscribes after the saved position, hands each event to a [`Follower`], and
//! saves how far it got — never past the oldest event whose work the follower still holds
//! open, so that a process restarted mid-work sees that event again. It saves at most every
//! [`SAVE_EVERY`] while events flow, and as soon as the log goes quiet for a second, so a
//! restart rereads little. A checkpoint that cannot be saved is tried again later: rereading a
//! few events is harmless, because followers act idempotently.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use domain::IntegrationId;
use futures::StreamExt;
use tokio::time::Instant;

use crate::{EventStore, RecordedEvent, StoreError};

/// How often a follower's position is saved at most while events flow.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);
/// How long the log stays quiet before the position reached is saved.
const QUIET: Duration = Duration::from_secs(1);

/// Where a follower keeps its position: the last event it is done with.
#[async_trait]
pub trait Checkpoint: Send + Sync {
    /// The saved position; 0 before the first save.
    async fn load(&self) -> Result<u64, StoreError>;
    async fn save(&self, position: u64) -> Result<(), StoreError>;
    /// What the logs call this follower.
    fn name(&self) -> &str;
}

/// What acts on the events a [`follow`] reads.
#[async_trait]
pub trait Follower: Send {
    /// Acts on one event. An error ends the follow (its supervisor starts it again, from the
    /// saved position).
    async fn on_event(&mut self, event: &RecordedEvent) -> Result<(), StoreError>;

    /// The position of the oldest event whose work is still in flight, if any: the saved
    /// position stays before it.
    fn oldest_open(&mut self) -> Option<u64> {
        None
    }
}

/// Follows the log with `follower` from `checkpoint`'s position until the subscription ends.
pub async fn follow(
    store: &dyn EventStore,
    checkpoint: &dyn Checkpoint,
    follower: &mut dyn Follower,
) -> Result<(), StoreError> {
    let from = checkpoint.load().await?;
    let mut events = store.subscribe(from + 1);
    let mut saved = from;
    let mut seen = from;
    let mut last_save = Instant::now();
    loop {
        let safe = follower
            .oldest_open()
            .map_or(seen, |open| open.saturating_sub(1).min(seen));
        let next = if safe > saved {
            if last_save.elapsed() >= SAVE_EVERY {
                saved = save(checkpoint, safe, saved).await;
                last_save = Instant::now();
                continue;
            }
            match tokio::time::timeout(QUIET, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    saved = save(checkpoint, safe, saved).await;
                    last_save = Instant::now();
                    continue;
                }
            }
        } else {
            // Nothing to save, or only work still in flight: look again now and then.
            match tokio::time::timeout(QUIET, events.next()).await {
                Ok(next) => next,
                Err(_) => continue,
            }
        };
        let Some(event) = next else { return Ok(()) };
        let event = event?;
        follower.on_event(&event).await?;
        seen = event.position;
    }
}

/// Saves `position`, and returns the position saved now (the previous one on failure).
async fn save(checkpoint: &dyn Checkpoint, position: u64, previous: u64) -> u64 {
    match checkpoint.save(position).await {
        Ok(()) => position,
        Err(error) => {
            tracing::warn!(%error, follower = checkpoint.name(), "could not save how far the log was followed");
            previous
        }
    }
}

/// The events whose work is in flight, by position, for [`Follower::oldest_open`]: an
/// integration's event stays held until the integration is idle.
#[derive(Debug, Default)]
pub struct InFlight {
    open: BTreeMap<u64, IntegrationId>,
}

impl InFlight {
    /// Holds `position` until `integration` is idle.
    pub fn hold(&mut self, position: u64, integration: IntegrationId) {
        self.open.insert(position, integration);
    }

    /// Releases the events of integrations `busy` says are idle, and returns the oldest
    /// position still held.
    pub fn oldest(&mut self, busy: impl Fn(&IntegrationId) -> bool) -> Option<u64> {
        self.open.retain(|_, integration| busy(integration));
        self.open.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use domain::StreamName;

    use super::*;
    use crate::waiting::eventually;
    use crate::{conformance, ExpectedVersion, SledEventStore};

    #[derive(Default)]
    struct Saved(Mutex<Vec<u64>>);

    #[async_trait]
    impl Checkpoint for Saved {
        async fn load(&self) -> Result<u64, StoreError> {
            Ok(self.0.lock().expect("saved").last().copied().unwrap_or(0))
        }
        async fn save(&self, position: u64) -> Result<(), StoreError> {
            self.0.lock().expect("saved").push(position);
            Ok(())
        }
        fn name(&self) -> &str {
            "test"
        }
    }

    /// Holds every event of the integrations in `busy`.
    struct Holding {
        seen: Arc<Mutex<Vec<u64>>>,
        held: InFlight,
        busy: Arc<Mutex<HashSet<IntegrationId>>>,
    }

    #[async_trait]
    impl Follower for Holding {
        async fn on_event(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
            self.seen.lock().expect("seen").push(event.position);
            if let Some(id) = event.stream.integration_id() {
                if self.busy.lock().expect("busy").contains(&id) {
                    self.held.hold(event.position, id);
                }
            }
            Ok(())
        }
        fn oldest_open(&mut self) -> Option<u64> {
            let busy = self.busy.lock().expect("busy").clone();
            self.held.oldest(|id| busy.contains(id))
        }
    }

    async fn append(store: &SledEventStore, integration: IntegrationId) {
        let stream = StreamName::from_stored(format!("integration-{integration}"));
        store
            .append(&stream, ExpectedVersion::Any, vec![conformance::event(1)])
            .await
            .expect("append");
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        eventually(Duration::from_secs(10), what, || {
            let done = done();
            async move { done.then_some(()) }
        })
        .await;
    }

    #[tokio::test]
    async fn the_saved_position_stays_before_work_in_flight_and_catches_up_when_it_ends() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(SledEventStore::open(dir.path()).expect("open"));
        let (idle, busy_one) = (IntegrationId::new(), IntegrationId::new());
        append(&store, idle).await; // 1
        append(&store, busy_one).await; // 2
        append(&store, idle).await; // 3
        let saved = Arc::new(Saved::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(Mutex::new(HashSet::from([busy_one])));
        let follower = {
            let (store, saved, seen, busy) =
                (store.clone(), saved.clone(), seen.clone(), busy.clone());
            tokio::spawn(async move {
                let mut follower = Holding {
                    seen,
                    held: InFlight::default(),
                    busy,
                };
                follow(store.as_ref(), saved.as_ref(), &mut follower).await
            })
        };
        until("all three events", || seen.lock().expect("seen").len() == 3).await;
        until("a save before the held event", || {
            saved.0.lock().expect("saved").last() == Some(&1)
        })
        .await;
        busy.lock().expect("busy").clear();
        until("the position to reach the end", || {
            saved.0.lock().expect("saved").last() == Some(&3)
        })
        .await;
        let positions = saved.0.lock().expect("saved").clone();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "saved in order: {positions:?}"
        );
        assert!(
            !positions.contains(&2),
            "never past the held event while it was held"
        );
        follower.abort();

        // Restarted, it reads only what came after the saved position.
        append(&store, idle).await; // 4
        let seen_again = Arc::new(Mutex::new(Vec::new()));
        let restarted = {
            let (store, saved, seen_again) = (store.clone(), saved.clone(), seen_again.clone());
            tokio::spawn(async move {
                let mut follower = Holding {
                    seen: seen_again,
                    held: InFlight::default(),
                    busy: Arc::default(),
                };
                follow(store.as_ref(), saved.as_ref(), &mut follower).await
            })
        };
        until("the new event", || {
            !seen_again.lock().expect("seen").is_empty()
        })
        .await;
        assert_eq!(*seen_again.lock().expect("seen"), vec![4]);
        restarted.abort();
    }
}
