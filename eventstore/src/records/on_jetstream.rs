//! The records log on JetStream: the stream `HARMONY_RECORDS`, beside the event log.

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::*;
use crate::jetstream::{
    aging_stream, beside, direct_batch, ensure_stream, DirectBatch, JetStreamConfig,
};
use crate::JetStreamEventStore;

/// The records log on JetStream, sharing the event log's connection.
#[derive(Clone, Debug)]
pub struct JetStreamRecordLog {
    js: jetstream::Context,
    config: JetStreamConfig,
    stream: String,
    /// The purge checkpoint, in the snapshots bucket.
    state: jetstream::kv::Store,
}

impl JetStreamRecordLog {
    /// Creates (or checks) `HARMONY_RECORDS` beside the event log of `store`.
    pub async fn open(store: &JetStreamEventStore) -> Result<Self, StoreError> {
        let config = store.config().clone();
        let js = beside(store);
        let wanted = aging_stream(
            &config,
            config.records_stream(),
            "Harmony Sync: synced record changes (personal data)",
            format!("{}.records.>", config.namespace),
            config.records_max_age,
        );
        ensure_stream(&js, wanted).await?;
        let state = js
            .get_key_value(config.snapshots_bucket())
            .await
            .map_err(|error| StoreError::unavailable_from("opening the state bucket", error))?;
        Ok(Self {
            js,
            stream: config.records_stream(),
            config,
            state,
        })
    }

    fn integration_subjects(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&UserId>,
        integration: IntegrationId,
    ) -> String {
        format!(
            "{}.records.{workspace}.{}.{integration}",
            self.config.namespace,
            owner.map_or("ws", UserId::as_str)
        )
    }
}

#[async_trait]
impl RecordLog for JetStreamRecordLog {
    async fn publish(&self, changes: Vec<RecordChange>) -> Result<(), StoreError> {
        // Publish them all, then wait for every acknowledgement: one round trip's latency for
        // a page of records, not one per record.
        let mut acks = Vec::with_capacity(changes.len());
        for change in &changes {
            check_object(&change.object)?;
            let subject = format!(
                "{}.{}",
                self.integration_subjects(
                    &change.workspace,
                    change.owner.as_ref(),
                    change.integration
                ),
                change.object
            );
            let mut headers = HeaderMap::new();
            let id = change.id.to_string();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(crate::wire::HEADER_EVENT_ID, id.as_str());
            headers.insert(crate::wire::HEADER_EVENT_TYPE, change.op.event_type());
            headers.insert(crate::wire::HEADER_EVENT_SCHEMA, "1");
            headers.insert("Content-Type", crate::wire::CONTENT_TYPE);
            let ack = self
                .js
                .publish_with_headers(subject, headers, Bytes::from(encode(change)?))
                .await
                .map_err(|error| StoreError::unavailable_from("publishing a record", error))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|error| StoreError::unavailable_from("storing a record", error))?;
        }
        Ok(())
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredRecordChange>, StoreError> {
        const PAGE: usize = 1024;
        let filter = format!("{}.records.>", self.config.namespace);
        let mut out = Vec::new();
        let mut next = from.max(1);
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let page = direct_batch(
                &self.js.client(),
                &self.stream,
                self.config.request_timeout,
                DirectBatch {
                    from: Some(next),
                    start_time: None,
                    filter: &filter,
                    batch: want,
                },
            )
            .await?;
            let len = page.len();
            for (seq, payload) in page {
                next = seq + 1;
                match decode(&payload, seq) {
                    Ok(change) => out.push(change),
                    Err(error) => tracing::warn!(%error, "skipping an undecodable record"),
                }
            }
            if len < want {
                break;
            }
        }
        Ok(out)
    }

    async fn purge_integration(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&UserId>,
        integration: IntegrationId,
    ) -> Result<u64, StoreError> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|error| StoreError::unavailable_from("opening the records", error))?;
        let filter = format!(
            "{}.>",
            self.integration_subjects(workspace, owner, integration)
        );
        let purged = stream
            .purge()
            .filter(filter)
            .await
            .map_err(|error| StoreError::unavailable_from("purging records", error))?;
        Ok(purged.purged)
    }

    async fn purge_checkpoint(&self) -> Result<u64, StoreError> {
        let value = self
            .state
            .get(PURGE_CHECKPOINT_KEY)
            .await
            .map_err(|error| StoreError::unavailable_from("reading a checkpoint", error))?;
        Ok(value
            .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
            .unwrap_or(0))
    }

    async fn save_purge_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        self.state
            .put(PURGE_CHECKPOINT_KEY, Bytes::from(position.to_string()))
            .await
            .map_err(|error| StoreError::unavailable_from("saving a checkpoint", error))?;
        Ok(())
    }
}

/// The key of the purge checkpoint in the JetStream state bucket.
const PURGE_CHECKPOINT_KEY: &str = "checkpoint.records-purge";
