//! Reading one Companion action's course from its integration's stream.
//!
//! The action's id is a UUID v7, so its time says where its events start: the stream's
//! versions are bisected by time, then read forward, each event decoded as the domain knows it
//! (older schemas upcast) and folded into [`ActionCourse`], until the action ends. The cost
//! follows the action's part of the stream, not the whole stream.

use domain::integration::{ActionCourse, IntegrationEvent, IntegrationEventKind};
use domain::{ActionId, EventDecodeError, IntegrationId, StreamName};
use eventstore::{EventStore, StoreError};

/// How much earlier than its id's time an action's first event may be stamped (clocks of the
/// processes that minted the id and stamped the event).
const CLOCK_MARGIN_MICROS: i64 = 5_000_000;

/// How many events are read at a time once the start is found.
const PAGE: usize = 1000;

/// Why an action's course could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CourseError {
    #[error("cannot read the event log")]
    Store(#[from] StoreError),
    #[error("an action's event does not decode")]
    Decode(#[from] EventDecodeError),
}

/// The course of `action` on `integration`, `None` when the stream holds no request for it.
pub async fn course(
    store: &dyn EventStore,
    integration: IntegrationId,
    action: ActionId,
) -> Result<Option<ActionCourse>, CourseError> {
    let stream = StreamName::integration(integration);
    let Some(last) = store.stream_version(&stream).await? else {
        return Ok(None);
    };
    let minted = action
        .as_uuid()
        .get_timestamp()
        .map(|at| {
            let (seconds, nanos) = at.to_unix();
            i64::try_from(seconds).unwrap_or(i64::MAX / 2) * 1_000_000 + i64::from(nanos / 1000)
        })
        .unwrap_or(0)
        - CLOCK_MARGIN_MICROS;
    // The first version stamped at or after `minted`.
    let (mut low, mut high) = (1, last + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let stamped = store
            .read_stream(&stream, middle, 1)
            .await?
            .first()
            .map_or(i64::MAX, |event| event.metadata.occurred_at.unix_micros());
        if stamped < minted {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let mut course: Option<ActionCourse> = None;
    let mut from = low;
    while from <= last {
        let page = store.read_stream(&stream, from, PAGE).await?;
        let Some(read) = page.last().map(|event| event.version) else {
            break;
        };
        for recorded in page {
            // Only the actions' events are decoded: the rest of the stream is not this read's.
            if !IntegrationEventKind::of(&recorded.event_type)
                .is_some_and(IntegrationEventKind::is_action)
            {
                continue;
            }
            let Some(event) = recorded.decode::<IntegrationEvent>()? else {
                continue;
            };
            course = ActionCourse::fold(course, action, &event, recorded.metadata.occurred_at);
            if course.as_ref().is_some_and(|c| c.state.is_final()) {
                return Ok(course);
            }
        }
        from = read + 1;
    }
    Ok(course)
}
