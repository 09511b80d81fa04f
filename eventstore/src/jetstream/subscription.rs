//! Following the log: an ordered consumer, restarted right after the last event delivered
//! when it fails.

use super::*;

/// A subscription on an ordered consumer: history, then live. When the consumer fails (the
/// server restarted, the connection dropped), a new one starts right after the last event
/// delivered, so the caller sees no gap and no duplicate.
pub(super) fn subscription(store: JetStreamEventStore, from: u64) -> EventStream {
    struct State {
        store: JetStreamEventStore,
        next: u64,
        messages: Option<jetstream::consumer::pull::Ordered>,
        backoff: Duration,
    }
    let state = State {
        store,
        next: from,
        messages: None,
        backoff: Duration::from_millis(50),
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        loop {
            let Some(messages) = state.messages.as_mut() else {
                match open_consumer(&state.store, state.next).await {
                    Ok(messages) => {
                        state.messages = Some(messages);
                        state.backoff = Duration::from_millis(50);
                    }
                    Err(error) => {
                        tracing::warn!(%error, from = state.next, "cannot follow the log yet; retrying");
                        tokio::time::sleep(state.backoff).await;
                        state.backoff = (state.backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    let seq = match message.info() {
                        Ok(info) => info.stream_sequence,
                        Err(error) => {
                            tracing::warn!(%error, "a log message without JetStream metadata");
                            continue;
                        }
                    };
                    if seq < state.next {
                        continue;
                    }
                    state.next = seq + 1;
                    match wire::decode(&message.payload, seq) {
                        Ok(event) => return Some((Ok(event), state)),
                        Err(error) => {
                            tracing::warn!(%error, subject = %message.subject, "skipping an undecodable message");
                        }
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, from = state.next, "the log's consumer failed; resuming");
                    state.messages = None;
                }
                None => {
                    tracing::warn!(from = state.next, "the log's consumer ended; resuming");
                    state.messages = None;
                }
            }
        }
    }))
}

pub(super) async fn open_consumer(
    store: &JetStreamEventStore,
    from: u64,
) -> Result<jetstream::consumer::pull::Ordered, StoreError> {
    let stream = store
        .inner
        .js
        .get_stream_no_info(&store.inner.stream)
        .await
        .map_err(|error| unavailable("opening the log", error))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: store.inner.config.events_subjects(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|error| unavailable("creating a consumer", error))?;
    consumer
        .messages()
        .await
        .map_err(|error| unavailable("consuming the log", error))
}
