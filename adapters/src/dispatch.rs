//! Where the sync and action dispatchers keep how far they followed the log: a named
//! checkpoint in the service database (see [`eventstore::follow`]).

use async_trait::async_trait;
use database::ServiceDb;
use eventstore::StoreError;

struct DispatchCheckpoint {
    db: ServiceDb,
    name: &'static str,
}

#[async_trait]
impl eventstore::follow::Checkpoint for DispatchCheckpoint {
    async fn load(&self) -> Result<u64, StoreError> {
        database::checkpoint(&self.db, self.name)
            .await
            .map_err(unavailable)
    }

    async fn save(&self, position: u64) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await.map_err(unavailable)?;
        tx.save_checkpoint(self.name, position)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    fn name(&self) -> &str {
        self.name
    }
}

fn unavailable(error: database::ServiceDbError) -> StoreError {
    StoreError::unavailable_from("the checkpoint in the service database", error)
}

/// Follows `store` with `follower` from the checkpoint `name` in `db`.
pub(crate) async fn follow(
    store: &dyn eventstore::EventStore,
    db: &ServiceDb,
    name: &'static str,
    follower: &mut dyn eventstore::follow::Follower,
) -> Result<(), StoreError> {
    let checkpoint = DispatchCheckpoint {
        db: db.clone(),
        name,
    };
    eventstore::follow::follow(store, &checkpoint, follower).await
}
