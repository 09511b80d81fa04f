//! Reading the log: everything, or one stream by its runs, never past the durable head.

use super::*;

impl SledEventStore {
    /// [`EventStore::read_workspace`] through the workspace index: its runs from the one
    /// holding `from_position`, each read as a contiguous range of the log.
    pub(super) fn read_workspace_sync(
        &self,
        workspace: &str,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.durable_head();
        let from = from_position.max(1);
        if from > head || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = workspace_prefix(workspace);
        let start = match self
            .shared
            .log
            .range(entry_key(&prefix, 0)..=entry_key(&prefix, from))
            .next_back()
        {
            Some(entry) => entry?.0.to_vec(),
            None => entry_key(&prefix, from),
        };
        let mut events = Vec::new();
        for entry in self.shared.log.range(start..) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            let first = read_u64(&key[prefix.len()..], from)?;
            let count = value
                .get(..4)
                .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt {
                    position: first,
                    reason: "a workspace index entry is broken".into(),
                })?;
            let begin = first.max(from);
            let end = (first + u64::from(count) - 1).min(head);
            if begin > end {
                if first > head {
                    break;
                }
                continue;
            }
            let wanted = ((end - begin + 1) as usize).min(limit - events.len());
            events.extend(self.read_all_sync(begin, wanted)?);
            if events.len() == limit || end == head {
                break;
            }
        }
        Ok(events)
    }

    pub(super) fn read_all_sync(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.durable_head();
        let from = from_position.max(1);
        if from > head || limit == 0 {
            return Ok(Vec::new());
        }
        let first_chunk = match self
            .shared
            .log
            .range(event_key(0)..=event_key(from))
            .next_back()
        {
            Some(entry) => read_u64(&entry?.0[1..], from)?,
            None => from,
        };
        let mut events = Vec::with_capacity(limit.min((head - from + 1) as usize));
        for entry in self
            .shared
            .log
            .range(event_key(first_chunk)..=event_key(head))
        {
            let (key, chunk) = entry?;
            let first = read_u64(&key[1..], from)?;
            let records = chunk::records(&chunk).ok_or_else(|| StoreError::Corrupt {
                position: first,
                reason: "chunk framing is broken".into(),
            })?;
            for (offset, record) in records.into_iter().enumerate() {
                let position = first + offset as u64;
                if position < from {
                    continue;
                }
                if position > head || events.len() == limit {
                    return Ok(events);
                }
                events.push(decode(position, record)?);
            }
        }
        Ok(events)
    }

    /// The stream's runs that cover versions from `from_version` on: the index's, then the
    /// writer's window's (taken first, so that a run the writer moves from the window to the
    /// index meanwhile is found in one of them, and dropped from the window's when it is in
    /// both).
    pub(super) fn stream_runs(
        &self,
        stream: &StreamName,
        from_version: u64,
    ) -> Result<impl Iterator<Item = Result<StreamRun, StoreError>> + '_, StoreError> {
        let window = self.shared.window_runs(stream);
        let prefix = stream_prefix(stream);
        let from = from_version.max(1);
        let covering = self
            .shared
            .log
            .range(entry_key(&prefix, 0)..=entry_key(&prefix, from))
            .next_back()
            .transpose()?;
        let start = covering.map_or_else(|| entry_key(&prefix, from), |(key, _)| key.to_vec());
        let end = entry_key(&prefix, u64::MAX);
        let prefix_len = prefix.len();
        let mut entries = self.shared.log.range(start..=end).map(move |entry| {
            let (key, value) = entry?;
            StreamRun::decode_all(prefix_len, &key, &value)
        });
        let mut entry: std::vec::IntoIter<StreamRun> = Vec::new().into_iter();
        let mut window = window.into_iter();
        // The last version the index gave: the window's runs up to it are in both.
        let mut indexed = 0;
        Ok(std::iter::from_fn(move || loop {
            if let Some(run) = entry.next() {
                indexed = run.last_version();
                return Some(Ok(run));
            }
            match entries.next() {
                Some(Ok(runs)) => entry = runs.into_iter(),
                Some(Err(error)) => return Some(Err(error)),
                None => {
                    return window
                        .by_ref()
                        .find(|run| run.first_version > indexed)
                        .map(Ok)
                }
            }
        }))
    }

    pub(super) fn read_stream_sync(
        &self,
        stream: &StreamName,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.durable_head();
        let from = from_version.max(1);
        let mut reader = ChunkReader::new(&self.shared.log);
        let mut events = Vec::new();
        for run in self.stream_runs(stream, from)? {
            let run = run?;
            for version in run.first_version.max(from)..=run.last_version() {
                let position = run.first_position + (version - run.first_version);
                if position > head || events.len() == limit {
                    return Ok(events);
                }
                let event = reader.event(position)?.ok_or_else(|| StoreError::Corrupt {
                    position,
                    reason: format!("stream {stream} indexes a missing event"),
                })?;
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The encoded size of the record at `position`, for benchmarks that write raw records
    /// of the same size.
    pub fn raw_record_len(&self, position: u64) -> Result<Option<usize>, StoreError> {
        Ok(ChunkReader::new(&self.shared.log)
            .record(position)?
            .map(|record| record.len()))
    }

    /// Scans every stored record without decoding it: the raw engine's replay, for
    /// benchmarks. Walks each chunk's framing to every record and reads its first byte.
    /// Returns the number of records and a checksum of the bytes read.
    pub fn raw_scan(&self) -> Result<(u64, u64), StoreError> {
        let (mut count, mut checksum) = (0u64, 0u64);
        for entry in self
            .shared
            .log
            .range(event_key(0)..=event_key(self.durable_head()))
        {
            let (key, chunk) = entry?;
            let records = chunk::records(&chunk).ok_or_else(|| StoreError::Corrupt {
                position: read_u64(&key[1..], 0).unwrap_or(0),
                reason: "chunk framing is broken".into(),
            })?;
            for record in records {
                count += 1;
                checksum = checksum.wrapping_add(u64::from(record.first().copied().unwrap_or(0)));
            }
        }
        Ok((count, checksum))
    }

    /// Rewrites the data of the stored event at `position` with `edit` applied, behind the
    /// chain's back. For tamper-detection tests and incident drills; never called by the
    /// service.
    pub fn tamper(
        &self,
        position: u64,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<(), StoreError> {
        let no_event = || StoreError::Corrupt {
            position,
            reason: "no such event".into(),
        };
        let (key, chunk) = self
            .shared
            .log
            .range(event_key(0)..=event_key(position))
            .next_back()
            .ok_or_else(no_event)??;
        let first = read_u64(&key[1..], position)?;
        let mut records: Vec<Vec<u8>> = chunk::records(&chunk)
            .ok_or_else(no_event)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let record = records
            .get_mut((position - first) as usize)
            .ok_or_else(no_event)?;
        if record.len() < HEADER {
            return Err(StoreError::Corrupt {
                position,
                reason: "record shorter than its header".into(),
            });
        }
        let mut body: StoredBody =
            postcard::from_bytes(&record[HEADER..]).map_err(|error| StoreError::Corrupt {
                position,
                reason: error.to_string(),
            })?;
        let mut data: serde_json::Value = serde_json::from_str(&body.data)
            .map_err(|error| StoreError::InvalidData(error.to_string()))?;
        edit(&mut data);
        body.data = canonical_data(&data)?;
        record.truncate(HEADER);
        record.extend(
            postcard::to_stdvec(&body)
                .map_err(|error| StoreError::storage_from("encoding", error))?,
        );
        self.shared.log.insert(key, chunk::encode(&records))?;
        self.shared.db.flush()?;
        Ok(())
    }
}
