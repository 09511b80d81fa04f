//! The run-detail log on JetStream: the stream `<NS>_RUNS` beside the event log.

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::*;
use crate::jetstream::{
    aging_stream, beside, direct_batch, ensure_stream, DirectBatch, JetStreamConfig,
};
use crate::JetStreamEventStore;

/// The run-detail log on JetStream, sharing the event log's connection. Each append is one
/// message on `<ns>.runs.<sync id>` holding its events (a JSON array), published with
/// `Nats-Expected-Last-Subject-Sequence`, so it lands only on the end it continues.
#[derive(Clone, Debug)]
pub struct JetStreamRunDetailLog {
    js: jetstream::Context,
    config: JetStreamConfig,
    stream: String,
}

impl JetStreamRunDetailLog {
    /// Creates (or checks) `<NS>_RUNS` beside the event log of `store`, its `max_age` the
    /// configured retention (changed in place when the retention changes).
    pub async fn open(store: &JetStreamEventStore) -> Result<Self, StoreError> {
        let config = store.config().clone();
        let js = beside(store);
        let wanted = aging_stream(
            &config,
            config.runs_stream(),
            "Harmony Sync: sync-run detail (progress), aged out",
            format!("{}.runs.>", config.namespace),
            config.run_detail_max_age,
        );
        // The retention is the one setting of this stream that may change: an existing
        // stream takes the new one first, then is checked like any other.
        if let Ok(mut existing) = js.get_stream(&wanted.name).await {
            let found = existing
                .info()
                .await
                .map_err(|error| StoreError::unavailable_from("reading the runs stream", error))?
                .config
                .clone();
            if found.max_age != wanted.max_age || found.duplicate_window != wanted.duplicate_window
            {
                js.update_stream(stream::Config {
                    max_age: wanted.max_age,
                    duplicate_window: wanted.duplicate_window,
                    ..found
                })
                .await
                .map_err(|error| {
                    StoreError::unavailable_from("changing the runs stream's retention", error)
                })?;
            }
        }
        ensure_stream(&js, wanted).await?;
        Ok(Self {
            js,
            stream: config.runs_stream(),
            config,
        })
    }

    fn subject(&self, sync_id: SyncId) -> String {
        format!("{}.runs.{sync_id}", self.config.namespace)
    }

    /// Every message of run `sync_id`: (sequence, its events).
    async fn messages(
        &self,
        sync_id: SyncId,
    ) -> Result<Vec<(u64, Vec<RecordedEvent>)>, StoreError> {
        const PAGE: usize = 256;
        let filter = self.subject(sync_id);
        let mut out = Vec::new();
        let mut next = 1;
        loop {
            let page = direct_batch(
                &self.js.client(),
                &self.stream,
                self.config.request_timeout,
                DirectBatch {
                    from: Some(next),
                    start_time: None,
                    filter: &filter,
                    batch: PAGE,
                },
            )
            .await?;
            let len = page.len();
            for (seq, payload) in page {
                next = seq + 1;
                let events: Vec<RecordedEvent> =
                    serde_json::from_slice(&payload).map_err(|error| StoreError::Corrupt {
                        position: seq,
                        reason: format!("a run-detail message does not decode: {error}"),
                    })?;
                out.push((seq, events));
            }
            if len < PAGE {
                return Ok(out);
            }
        }
    }

    async fn publish(
        &self,
        sync_id: SyncId,
        last_seq: u64,
        events: &[RecordedEvent],
    ) -> Result<Option<u64>, StoreError> {
        let body = serde_json::to_vec(events)
            .map_err(|error| StoreError::storage_from("encoding run detail", error))?;
        let mut headers = HeaderMap::new();
        if let Some(first) = events.first() {
            headers.insert("Nats-Msg-Id", first.id.to_string().as_str());
        }
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last_seq.to_string().as_str(),
        );
        headers.insert("Content-Type", "application/json");
        let ack = self
            .js
            .publish_with_headers(self.subject(sync_id), headers, Bytes::from(body))
            .await
            .map_err(|error| StoreError::unavailable_from("publishing run detail", error))?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(error) => Err(StoreError::unavailable_from("storing run detail", error)),
        }
    }
}

#[async_trait]
impl RunDetailLog for JetStreamRunDetailLog {
    async fn append(
        &self,
        sync_id: SyncId,
        after: DetailTip,
        events: Vec<NewEvent>,
    ) -> Result<DetailTip, StoreError> {
        if events.is_empty() {
            return Ok(after);
        }
        // The append lands only if the run's last message is still the one `after` names:
        // nothing is read first, so a run's appends cost one round trip each.
        let (recorded, new_tip) = chain_after(sync_id, after, events, |_| 0)?;
        match self.publish(sync_id, after.position, &recorded).await? {
            Some(seq) => Ok(DetailTip {
                position: seq,
                ..new_tip
            }),
            None => {
                let now = self.read(sync_id).await?;
                Err(conflict(
                    sync_id,
                    after,
                    now.last().map_or(0, |event| event.version),
                ))
            }
        }
    }

    async fn read(&self, sync_id: SyncId) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .messages(sync_id)
            .await?
            .into_iter()
            .flat_map(|(seq, events)| {
                events.into_iter().map(move |mut event| {
                    event.position = seq;
                    event
                })
            })
            .collect())
    }

    async fn import(&self, sync_id: SyncId, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        if events.is_empty() || !self.messages(sync_id).await?.is_empty() {
            return Ok(());
        }
        self.publish(sync_id, 0, &events).await?;
        Ok(())
    }

    async fn expire(&self, _cutoff: Timestamp) -> Result<u64, StoreError> {
        // `max_age` ages the detail out on the server.
        Ok(0)
    }
}
