//! Loading aggregates and executing commands against the log.
//!
//! Loading reads the latest snapshot (checked against the chain hash it was taken at) and only
//! the events after it, so the cost of a load is bounded however long a stream grows. When a
//! load had to fold more than [`Repository::snapshot_every`] events, it saves a new snapshot.
//!
//! Executing a command loads, decides, and appends with the loaded version as the expected
//! one; on a conflict (someone else appended in between) it reloads and decides again, a
//! bounded number of times.

use std::sync::Arc;

use domain::{Aggregate, CommandContext, DomainError, EventDecodeError, StreamName};

use eventstore::{
    AppendResult, ChainHash, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Snapshot,
    StoreError,
};

/// Why a command or a load failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event {version} of {stream} cannot be read: {error}")]
    Decode {
        stream: StreamName,
        version: u64,
        error: EventDecodeError,
    },
    #[error("{stream} kept changing under {attempts} attempts of the same command")]
    TooMuchContention { stream: StreamName, attempts: u32 },
}

/// An aggregate as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    pub state: A,
    /// The stream's version; 0 when it has no events.
    pub version: u64,
    /// The chain hash at `version`.
    pub hash: ChainHash,
    /// How many events were read from the log for this load (snapshot tail only).
    pub events_read: u64,
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<A: Aggregate> {
    pub state: A,
    pub events: Vec<RecordedEvent>,
    /// `None` when the command decided there was nothing to do.
    pub append: Option<AppendResult>,
}

/// What [`Repository::decide`] did: the state after the command, and where its events landed
/// (`None` when it decided there was nothing to do).
#[derive(Debug)]
pub struct Decided<A: Aggregate> {
    pub state: A,
    pub append: Option<AppendResult>,
}

/// Loads aggregates from, and appends their events to, one event store.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn EventStore>,
    /// Save a snapshot once a load folds this many events past the last one.
    pub snapshot_every: u64,
    /// How many times a command is decided again after a conflict.
    pub max_attempts: u32,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("snapshot_every", &self.snapshot_every)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

const PAGE: usize = 1000;

impl Repository {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            snapshot_every: 500,
            max_attempts: 16,
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    async fn state_from_snapshot<A: Aggregate>(
        &self,
        stream: &StreamName,
    ) -> Result<Option<(A, u64, ChainHash)>, StoreError> {
        let Some(snapshot) = self.store.load_snapshot(stream).await? else {
            return Ok(None);
        };
        if snapshot.schema != A::SNAPSHOT_SCHEMA {
            return Ok(None);
        }
        // The snapshot is trusted only if the event it was taken at is still the one in the log.
        let at = self.store.read_stream(stream, snapshot.version, 1).await?;
        let matches = at
            .first()
            .is_some_and(|event| event.version == snapshot.version && event.hash == snapshot.hash);
        if !matches {
            tracing::warn!(%stream, version = snapshot.version, "ignoring a snapshot that no longer matches the log");
            return Ok(None);
        }
        Ok(serde_json::from_slice(&snapshot.state)
            .ok()
            .map(|state| (state, snapshot.version, snapshot.hash)))
    }

    /// The current state of the aggregate in `stream`.
    pub async fn load<A: Aggregate>(
        &self,
        stream: &StreamName,
    ) -> Result<Loaded<A>, RepositoryError> {
        let (mut state, mut version, mut hash) = self
            .state_from_snapshot::<A>(stream)
            .await?
            .unwrap_or((A::default(), 0, ChainHash::GENESIS));
        let mut events_read = 0;
        loop {
            let page = self.store.read_stream(stream, version + 1, PAGE).await?;
            let page_len = page.len();
            for event in &page {
                apply_recorded(&mut state, event)?;
                version = event.version;
                hash = event.hash;
            }
            events_read += page_len as u64;
            if page_len < PAGE {
                break;
            }
        }
        if events_read >= self.snapshot_every {
            self.save_snapshot(stream, &state, version, hash).await;
        }
        Ok(Loaded {
            state,
            version,
            hash,
            events_read,
        })
    }

    /// The state as of `as_of`: every event that occurred at or before it, folded. Reads the
    /// whole stream, never a snapshot, because auditors must see exactly what the log says.
    pub async fn load_as_of<A: Aggregate>(
        &self,
        stream: &StreamName,
        as_of: domain::Timestamp,
    ) -> Result<Loaded<A>, RepositoryError> {
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            hash: ChainHash::GENESIS,
            events_read: 0,
        };
        loop {
            let page = self
                .store
                .read_stream(stream, loaded.version + 1, PAGE)
                .await?;
            let page_len = page.len();
            for event in &page {
                if event.metadata.occurred_at > as_of {
                    return Ok(loaded);
                }
                apply_recorded(&mut loaded.state, event)?;
                loaded.version = event.version;
                loaded.hash = event.hash;
                loaded.events_read += 1;
            }
            if page_len < PAGE {
                return Ok(loaded);
            }
        }
    }

    async fn save_snapshot<A: Aggregate>(
        &self,
        stream: &StreamName,
        state: &A,
        version: u64,
        hash: ChainHash,
    ) {
        let Ok(bytes) = serde_json::to_vec(state) else {
            return;
        };
        let snapshot = Snapshot {
            version,
            schema: A::SNAPSHOT_SCHEMA,
            hash,
            state: bytes,
        };
        if let Err(error) = self.store.save_snapshot(stream, snapshot).await {
            // A missing snapshot costs time on the next load, nothing else.
            tracing::warn!(%stream, %error, "could not save a snapshot");
        }
    }

    /// Decides `command` on the current state of `stream` and appends what it yields; answers
    /// the events as recorded (positions and hashes included).
    pub async fn execute<A: Aggregate>(
        &self,
        stream: &StreamName,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A>, RepositoryError> {
        let decided = self.decide::<A>(stream, command, context).await?;
        let events = match &decided.append {
            // Read back what was stored: callers get the recorded events with their
            // positions and hashes.
            Some(append) => {
                self.store
                    .read_stream(
                        stream,
                        append.first_version,
                        (append.last_version - append.first_version + 1) as usize,
                    )
                    .await?
            }
            None => Vec::new(),
        };
        Ok(Executed {
            state: decided.state,
            events,
            append: decided.append,
        })
    }

    /// As [`Repository::execute`], without reading the appended events back: for callers that
    /// need only the new state and where the events landed (a request answered over HTTP).
    pub async fn decide<A: Aggregate>(
        &self,
        stream: &StreamName,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Decided<A>, RepositoryError> {
        for _ in 0..self.max_attempts {
            let loaded = self.load::<A>(stream).await?;
            let decided = loaded.state.handle(command, context)?;
            if decided.is_empty() {
                return Ok(Decided {
                    state: loaded.state,
                    append: None,
                });
            }
            let metadata = loaded.state.metadata_for(command, context);
            let new_events: Vec<NewEvent> = decided
                .iter()
                .map(|event| NewEvent::from_domain(event, metadata.clone()))
                .collect();
            match self
                .store
                .append(
                    stream,
                    ExpectedVersion::from_version(loaded.version),
                    new_events,
                )
                .await
            {
                Ok(append) => {
                    crate::written::note(append.last_position);
                    let mut state = loaded.state;
                    for event in &decided {
                        state.apply(event, &metadata);
                    }
                    return Ok(Decided {
                        state,
                        append: Some(append),
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(RepositoryError::TooMuchContention {
            stream: stream.clone(),
            attempts: self.max_attempts,
        })
    }
}

/// An aggregate a long-running caller keeps current itself (a sync run appending a progress
/// event per page), so each command is decided without loading the stream again.
#[derive(Debug, Clone, PartialEq)]
pub struct Held<A> {
    pub state: A,
    pub version: u64,
}

impl Repository {
    /// Loads `stream` to hold it.
    pub async fn hold<A: Aggregate>(
        &self,
        stream: &StreamName,
    ) -> Result<Held<A>, RepositoryError> {
        let loaded = self.load::<A>(stream).await?;
        Ok(Held {
            state: loaded.state,
            version: loaded.version,
        })
    }

    /// Decides `command` on `held` and appends what it yields, expecting the stream still at
    /// `held.version`. On a conflict (someone else appended) it loads again and decides again.
    /// `held` is left current either way; the appended events' count is returned.
    pub async fn execute_held<A: Aggregate>(
        &self,
        stream: &StreamName,
        held: &mut Held<A>,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<usize, RepositoryError> {
        self.execute_held_all(stream, held, std::slice::from_ref(command), context)
            .await
    }

    /// Decides `commands` one after the other on `held` and appends all they yield in one
    /// atomic append: all of them or none.
    pub async fn execute_held_all<A: Aggregate>(
        &self,
        stream: &StreamName,
        held: &mut Held<A>,
        commands: &[A::Command],
        context: &CommandContext,
    ) -> Result<usize, RepositoryError> {
        for _ in 0..self.max_attempts {
            let mut next = held.state.clone();
            let mut new_events = Vec::new();
            for command in commands {
                let decided = next.handle(command, context)?;
                let metadata = next.metadata_for(command, context);
                for event in &decided {
                    next.apply(event, &metadata);
                    new_events.push(NewEvent::from_domain(event, metadata.clone()));
                }
            }
            if new_events.is_empty() {
                return Ok(0);
            }
            let count = new_events.len();
            match self
                .store
                .append(
                    stream,
                    ExpectedVersion::from_version(held.version),
                    new_events,
                )
                .await
            {
                Ok(append) => {
                    crate::written::note(append.last_position);
                    held.state = next;
                    held.version = append.last_version;
                    return Ok(count);
                }
                Err(StoreError::Conflict { .. }) => *held = self.hold::<A>(stream).await?,
                Err(error) => return Err(error.into()),
            }
        }
        Err(RepositoryError::TooMuchContention {
            stream: stream.clone(),
            attempts: self.max_attempts,
        })
    }
}

/// Folds one recorded event into `state`; an event type this aggregate does not know is
/// skipped (a newer build may have written it), one it knows but cannot decode is an error.
pub fn apply_recorded<A: Aggregate>(
    state: &mut A,
    event: &RecordedEvent,
) -> Result<(), RepositoryError> {
    match event.decode::<A::Event>() {
        Ok(Some(decoded)) => {
            state.apply(&decoded, &event.metadata);
            Ok(())
        }
        Ok(None) => {
            tracing::debug!(stream = %event.stream, version = event.version, event_type = %event.event_type, "skipping an unknown event type");
            Ok(())
        }
        Err(error) => Err(RepositoryError::Decode {
            stream: event.stream.clone(),
            version: event.version,
            error,
        }),
    }
}
