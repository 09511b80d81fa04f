//! One sync run: pulls each object's pages, maps and hashes the records, publishes what
//! changed, sweeps what is gone, records its progress in its detail (the run-detail log) and
//! its end in the integration's log. [`SyncWorker`](super::SyncWorker) decides which run goes where and when.

use super::*;

pub(super) struct Stop {
    pub(super) cancelled: watch::Receiver<bool>,
    pub(super) lost: watch::Receiver<bool>,
}

impl Stop {
    fn check(&self) -> Result<(), RunError> {
        if *self.cancelled.borrow() {
            return Err(RunError::Cancelled);
        }
        if *self.lost.borrow() {
            return Err(RunError::LeaseLost);
        }
        Ok(())
    }

    /// Runs `work` unless the run is cancelled or its lease lost first.
    async fn guard<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, RunError>>,
    ) -> Result<T, RunError> {
        self.check()?;
        let mut cancelled = self.cancelled.clone();
        let mut lost = self.lost.clone();
        tokio::select! {
            result = work => result,
            _ = cancelled.wait_for(|c| *c) => Err(RunError::Cancelled),
            _ = lost.wait_for(|l| *l) => Err(RunError::LeaseLost),
        }
    }
}

pub(super) struct Run<'a> {
    pub(super) worker: &'a SyncWorker,
    pub(super) id: IntegrationId,
    pub(super) stream: StreamName,
    pub(super) sync_id: SyncId,
    pub(super) kind: SyncKind,
    /// The state as the run started: profile, setup and mappings.
    pub(super) state: &'a Integration,
    /// The state kept current as the run appends, so no append loads the stream again.
    pub(super) held: tokio::sync::Mutex<Held<Integration>>,
    pub(super) stop: Stop,
    pub(super) started: Instant,
    /// When the run last recorded its progress (or started).
    pub(super) recorded: std::sync::Mutex<Instant>,
    /// What the pages whose progress was not recorded counted, for the run's totals.
    pub(super) unrecorded: std::sync::Mutex<RecordCounts>,
    /// The run's detail stream as far as it goes. A run is claimed by its lease, not by an
    /// event: it appends `SyncStarted` to its detail with the first progress it records, so a
    /// run that finds nothing writes no detail and appends only its end.
    pub(super) detail: tokio::sync::Mutex<Detail>,
}

/// A run's detail stream (`run-<sync id>` in the run-detail log) as the run holds it.
#[derive(Clone, Debug, Default)]
pub(super) struct Detail {
    pub(super) tip: Option<DetailTip>,
    pub(super) started_at: Option<Timestamp>,
    pub(super) pages: u32,
    /// What the recorded pages counted.
    pub(super) counted: RecordCounts,
}

impl Detail {
    /// The detail of run `sync_id` as the log holds it, for a run resumed after its worker
    /// stopped: its tip, and the cursor of its last recorded page.
    pub(super) fn read(
        sync_id: SyncId,
        events: &[RecordedEvent],
    ) -> Result<(Self, Option<String>), RunError> {
        let mut detail = Detail::default();
        let mut cursor = None;
        for event in events {
            match event.decode::<IntegrationEvent>() {
                Ok(Some(IntegrationEvent::SyncStarted(started))) if started.sync_id == sync_id => {
                    detail.started_at = Some(event.metadata.occurred_at);
                }
                Ok(Some(IntegrationEvent::SyncProgressed(page))) if page.sync_id == sync_id => {
                    detail.pages = detail.pages.max(page.page);
                    detail.counted.add(&page.counts);
                    cursor = page.cursor;
                }
                Ok(_) => {}
                Err(error) => return Err(RunError::Internal(format!("the run's detail: {error}"))),
            }
            detail.tip = Some(DetailTip::after(event));
        }
        Ok((detail, cursor))
    }

    /// The head the run's outcome commits to, if it recorded any detail.
    fn head(&self) -> Option<RunDetailHead> {
        let tip = self.tip?;
        Some(RunDetailHead {
            version: tip.version,
            hash: tip.hash.to_hex(),
            started_at: self.started_at.unwrap_or_else(Timestamp::now),
            pages: self.pages,
        })
    }
}

/// Progress through pages that changed nothing is recorded at most this often. A run killed
/// between two records pulls those pages again, which publishes nothing, so a run that finds
/// nothing appends no progress at all when it is quick, and a long one stays resumable.
const QUIET_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A 64-bit digest of a record's key, for remembering the keys a first sync wrote.
fn key_digest(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Whether pages with these counts changed any record.
fn changed_anything(counts: &RecordCounts) -> bool {
    counts.created + counts.updated + counts.deleted > 0
}

/// What a run asks of its provider.
enum Ask<'r> {
    Page(PullRequest<'r>),
    AnythingNew { object: &'r str, since: &'r str },
}

enum Answer {
    Page(Page),
    AnythingNew(Option<bool>),
}

async fn ask_once(
    provider: &dyn Provider,
    connection: Connection<'_>,
    ask: &Ask<'_>,
) -> Result<Answer, ProviderError> {
    Ok(match ask {
        Ask::Page(request) => Answer::Page(provider.pull(connection, request.clone()).await?),
        Ask::AnythingNew { object, since } => {
            Answer::AnythingNew(provider.anything_new(connection, object, since).await?)
        }
    })
}

/// A page pulled, mapped and hashed, waiting to be written.
struct Prepared {
    seen: Vec<Seen>,
    pulled: u64,
    next_page: Option<String>,
    watermark: Option<String>,
}

/// One record of a page, mapped and hashed.
struct Seen {
    key: String,
    record_id: String,
    data: Value,
    hash: String,
    deleted: bool,
}

impl Run<'_> {
    fn inner(&self) -> &Inner {
        &self.worker.inner
    }

    pub(super) async fn objects(
        &self,
        start: RunCursor,
        page_no: &mut u32,
        totals: &mut RecordCounts,
    ) -> Result<(), RunError> {
        let profile =
            self.state.profile.as_ref().ok_or_else(|| {
                RunError::Internal("a connected integration has a profile".into())
            })?;
        let app = catalog::app(&profile.app)
            .ok_or_else(|| RunError::Internal(format!("unknown app {}", profile.app)))?;
        let provider = self.inner().providers.get(app.id).cloned().ok_or_else(|| {
            ProviderError::Misconfigured(format!("{} has no provider client here", app.name))
        })?;
        let mut credentials = self
            .stop
            .guard(async {
                Ok(self
                    .inner()
                    .credentials
                    .current(self.id, self.state)
                    .await?)
            })
            .await?;
        for (index, object) in app
            .capabilities
            .sync_objects
            .iter()
            .enumerate()
            .skip(start.object)
        {
            let resume = (index == start.object).then_some(&start);
            let mut mode = match self.kind {
                SyncKind::Full => PullMode::Full,
                SyncKind::Incremental => PullMode::Incremental {
                    since: self.watermark(object).await?,
                },
            };
            let fields = self.fields_to_fetch(app, object);
            let mut page = resume.and_then(|c| c.page.clone());
            let sweep_only = resume.is_some_and(|c| c.sweep);
            if let (PullMode::Incremental { since: Some(since) }, None) = (&mode, &page) {
                // Asked first where the provider can say cheaply that nothing is new.
                let answer = self
                    .anything_new(provider.as_ref(), &mut credentials, object, since)
                    .await?;
                if answer == Some(false) {
                    tracing::debug!(integration = %self.id, object, "nothing new at the provider");
                    continue;
                }
            }
            if !sweep_only {
                // An object with no content hash stored yet (its first sync) has nothing to
                // look up: only the keys this run has already written are. Asked only once
                // pages are to be pulled, so a run that finds nothing new pays nothing for it.
                let mut first_sync = if self.hashes_stored(object).await? {
                    None
                } else {
                    Some(HashSet::new())
                };
                // The next page is pulled, mapped and hashed while this one is written.
                let (ready, prepared) = tokio::sync::mpsc::channel::<Prepared>(WRITE_BATCH_PAGES);
                let produce = async {
                    // Owned here, so the writer sees the end when this finishes.
                    let ready = ready;
                    loop {
                        let request = PullRequest {
                            object,
                            fields: &fields,
                            mode: &mode,
                            page: page.as_deref(),
                        };
                        let pulled = match self
                            .pull(provider.as_ref(), &mut credentials, request)
                            .await
                        {
                            Err(RunError::Provider(ProviderError::StaleCursor { detail }))
                                if matches!(mode, PullMode::Incremental { .. }) =>
                            {
                                // The provider forgot our watermark: pull the object in full.
                                tracing::info!(integration = %self.id, object, %detail, "the sync token is stale; pulling the object in full");
                                self.forget_watermark(object).await?;
                                mode = PullMode::Incremental { since: None };
                                page = None;
                                continue;
                            }
                            other => other?,
                        };
                        let received =
                            pulled.records.iter().filter(|r| r.received()).count() as u64;
                        let seen = self.prepare(object, pulled.records)?;
                        let next = pulled.next_page.clone();
                        let item = Prepared {
                            seen,
                            pulled: received,
                            next_page: pulled.next_page,
                            watermark: pulled.watermark,
                        };
                        if ready.send(item).await.is_err() {
                            // The writer stopped; its error is the run's.
                            return Ok(());
                        }
                        match next {
                            Some(next) => page = Some(next),
                            None => return Ok::<(), RunError>(()),
                        }
                    }
                };
                let consume = async {
                    // Owned here, so the puller's sends fail once this stops.
                    let mut prepared = prepared;
                    while let Some(first) = prepared.recv().await {
                        // Pages that are ready together are written together: one publish,
                        // one transaction and one append for all of them.
                        let mut batch = vec![first];
                        while batch.len() < WRITE_BATCH_PAGES {
                            match prepared.try_recv() {
                                Ok(item) => batch.push(item),
                                Err(_) => break,
                            }
                        }
                        let counted = self
                            .stop
                            .guard(self.write_pages(object, &mut batch, first_sync.as_mut()))
                            .await?;
                        // Decided before the batch's commands are made, so a batch that is not
                        // recorded costs no command at all.
                        let record = self.due_to_record(counted.iter().any(changed_anything));
                        if !record {
                            self.count_unrecorded(&counted);
                        }
                        let mut commands = Vec::with_capacity(if record { batch.len() } else { 0 });
                        for (item, counts) in batch.into_iter().zip(counted) {
                            let last = item.next_page.is_none();
                            if last {
                                if let Some(watermark) = &item.watermark {
                                    self.save_watermark(object, watermark).await?;
                                }
                            }
                            *page_no += 1;
                            totals.add(&counts);
                            if record {
                                let cursor = RunCursor {
                                    object: index,
                                    sweep: last && self.kind == SyncKind::Full,
                                    page: item.next_page,
                                };
                                commands.push(SyncProgressed {
                                    sync_id: self.sync_id,
                                    object: object.to_string(),
                                    page: *page_no,
                                    counts,
                                    cursor: Some(cursor.encode()),
                                });
                            }
                        }
                        if record {
                            self.record(commands).await?;
                        }
                    }
                    Ok::<(), RunError>(())
                };
                let (produced, consumed) = futures::join!(produce, consume);
                consumed?;
                produced?;
            }
            if self.kind == SyncKind::Full {
                let deleted = self.stop.guard(self.sweep(object)).await?;
                *page_no += 1;
                totals.add(&deleted);
                let next = RunCursor {
                    object: index + 1,
                    page: None,
                    sweep: false,
                };
                if self.due_to_record(changed_anything(&deleted)) {
                    self.progress(object, *page_no, deleted, next).await?;
                } else {
                    self.count_unrecorded(std::slice::from_ref(&deleted));
                }
            }
        }
        Ok(())
    }

    async fn pull(
        &self,
        provider: &dyn Provider,
        credentials: &mut Credentials,
        request: PullRequest<'_>,
    ) -> Result<Page, RunError> {
        match self.ask(provider, credentials, Ask::Page(request)).await? {
            Answer::Page(page) => Ok(page),
            Answer::AnythingNew(_) => {
                Err(RunError::Internal("a page asked, a check answered".into()))
            }
        }
    }

    /// Whether the provider has anything new for `object` since `since`, when it can say
    /// more cheaply than a pull (`None` otherwise).
    async fn anything_new(
        &self,
        provider: &dyn Provider,
        credentials: &mut Credentials,
        object: &str,
        since: &str,
    ) -> Result<Option<bool>, RunError> {
        match self
            .ask(provider, credentials, Ask::AnythingNew { object, since })
            .await?
        {
            Answer::AnythingNew(answer) => Ok(answer),
            Answer::Page(_) => Err(RunError::Internal("a check asked, a page answered".into())),
        }
    }

    /// Asks the provider, and once more with refreshed credentials if it refuses them.
    async fn ask(
        &self,
        provider: &dyn Provider,
        credentials: &mut Credentials,
        ask: Ask<'_>,
    ) -> Result<Answer, RunError> {
        let setup = &self.state.setup;
        let first = self
            .stop
            .guard(async { Ok(ask_once(provider, Connection { setup, credentials }, &ask).await?) })
            .await;
        match first {
            Err(RunError::Provider(ProviderError::Unauthorized { .. })) => {
                let stale = credentials.clone();
                *credentials = self
                    .stop
                    .guard(async { Ok(self.inner().credentials.refresh(self.id, &stale).await?) })
                    .await?;
                self.stop
                    .guard(async {
                        Ok(ask_once(provider, Connection { setup, credentials }, &ask).await?)
                    })
                    .await
            }
            other => other,
        }
    }

    fn fields_to_fetch(&self, app: &catalog::App, object: &str) -> Vec<String> {
        let mut fields: Vec<String> = app
            .mappable_object(object)
            .map(|m| m.provider_fields.iter().map(|f| (*f).to_owned()).collect())
            .unwrap_or_default();
        if let Some(mapping) = self.state.mappings.get(object) {
            for pair in &mapping.fields {
                if !fields.contains(&pair.provider_field) {
                    fields.push(pair.provider_field.clone());
                }
            }
        }
        fields
    }

    fn scope(&self, object: &str) -> String {
        format!("{}\u{1f}{object}", self.id)
    }

    /// Maps and hashes a page's records, taking them over: a record without a mapping is
    /// published as it came, without a copy.
    fn prepare(&self, object: &str, records: Vec<PulledRecord>) -> Result<Vec<Seen>, RunError> {
        let scope = self.scope(object);
        let mapping = self.state.mappings.get(object).map(|m| m.fields.as_slice());
        records
            .into_iter()
            .map(|record| {
                let data = if record.deleted {
                    Value::Null
                } else {
                    match mapping {
                        Some(mapping) => map_record(&record.fields, Some(mapping)),
                        None => Value::Object(record.fields),
                    }
                };
                let hash = RecordChange::hash_of(&data)?;
                Ok(Seen {
                    key: format!("{scope}\u{1f}{}", record.id),
                    record_id: record.id,
                    data,
                    hash,
                    deleted: record.deleted,
                })
            })
            .collect()
    }

    /// Compares prepared pages with the stored hashes, publishes what changed, then stores
    /// the new hashes; returns each page's counts.
    async fn write_pages(
        &self,
        object: &str,
        pages: &mut [Prepared],
        first_sync: Option<&mut HashSet<u64>>,
    ) -> Result<Vec<RecordCounts>, RunError> {
        let scope = self.scope(object);
        let mut keys: Vec<String> = pages
            .iter()
            .flat_map(|page| page.seen.iter().map(|s| s.key.clone()))
            .collect();
        if let Some(written) = first_sync {
            // Nothing was stored for the object before this run: a key is looked up only if
            // this run may have written it (its digest was seen; a collision costs a lookup).
            keys.retain(|key| !written.insert(key_digest(key)));
        }
        let mut known: HashMap<String, Option<String>> = fetch_in::<(String, String)>(
            &self.inner().db,
            "SELECT key, hash FROM record_hashes WHERE key IN ",
            &keys,
        )
        .await?
        .into_iter()
        .map(|(key, hash)| (key, Some(hash)))
        .collect();
        let sync = self.sync_id.to_string();
        let mut all_counts = Vec::with_capacity(pages.len());
        let mut changes = Vec::new();
        // The last state of each key across the pages: a record seen twice counts once.
        let mut rows: BTreeMap<String, Vec<Bind>> = BTreeMap::new();
        let mut removed = Vec::new();
        for page in pages.iter_mut() {
            let mut counts = RecordCounts {
                pulled: page.pulled,
                ..RecordCounts::default()
            };
            for record in std::mem::take(&mut page.seen) {
                let before = known.get(&record.key).cloned().flatten();
                let op = match (record.deleted, &before) {
                    (true, Some(_)) => Some(RecordOp::Deleted),
                    (true, None) => None,
                    (false, None) => Some(RecordOp::Created),
                    (false, Some(hash)) if *hash != record.hash => Some(RecordOp::Updated),
                    (false, Some(_)) => None,
                };
                match op {
                    Some(RecordOp::Created) => counts.created += 1,
                    Some(RecordOp::Updated) => counts.updated += 1,
                    Some(RecordOp::Deleted) => counts.deleted += 1,
                    None => {}
                }
                if record.deleted {
                    known.insert(record.key.clone(), None);
                    rows.remove(&record.key);
                    removed.push(record.key.clone());
                } else {
                    known.insert(record.key.clone(), Some(record.hash.clone()));
                    rows.insert(
                        record.key.clone(),
                        vec![
                            Bind::Text(record.key.clone()),
                            Bind::Text(scope.clone()),
                            Bind::Text(record.record_id.clone()),
                            Bind::Text(record.hash.clone()),
                            Bind::Text(sync.clone()),
                        ],
                    );
                }
                if let Some(op) = op {
                    changes.push(self.change(
                        object,
                        record.record_id,
                        op,
                        record.data,
                        record.hash,
                    ));
                }
            }
            all_counts.push(counts);
        }
        if !changes.is_empty() {
            self.inner().records.publish(changes).await?;
        }
        let upserts: Vec<Vec<Bind>> = rows.into_values().collect();
        let mut tx = self.inner().db.begin_write().await?;
        tx.insert_rows(
            "INSERT INTO record_hashes (key, scope, record_id, hash, seen_sync) ",
            "ON CONFLICT (key) DO UPDATE SET hash = excluded.hash, seen_sync = excluded.seen_sync",
            &upserts,
        )
        .await?;
        if !removed.is_empty() {
            tx.execute_in("DELETE FROM record_hashes WHERE key IN ", &removed)
                .await?;
        }
        tx.commit().await?;
        Ok(all_counts)
    }

    /// Whether any content hash of `object` is stored for this integration.
    async fn hashes_stored(&self, object: &str) -> Result<bool, RunError> {
        let found: Vec<(String,)> = fetch_all(
            &self.inner().db,
            "SELECT key FROM record_hashes WHERE scope = $1 LIMIT 1",
            &[Bind::Text(self.scope(object))],
        )
        .await?;
        Ok(!found.is_empty())
    }

    /// After a full run: every record of `object` the run did not see was deleted at the
    /// provider.
    async fn sweep(&self, object: &str) -> Result<RecordCounts, RunError> {
        let scope = self.scope(object);
        let sync = self.sync_id.to_string();
        let mut counts = RecordCounts::default();
        let mut after = String::new();
        loop {
            let gone: Vec<(String, String)> = fetch_all(
                &self.inner().db,
                "SELECT key, record_id FROM record_hashes WHERE scope = $1 AND seen_sync <> $2 \
                 AND key > $3 ORDER BY key LIMIT 1000",
                &[
                    Bind::Text(scope.clone()),
                    Bind::Text(sync.clone()),
                    Bind::Text(after.clone()),
                ],
            )
            .await?;
            let Some((last, _)) = gone.last() else {
                return Ok(counts);
            };
            after = last.clone();
            counts.deleted += gone.len() as u64;
            let changes = gone
                .iter()
                .map(|(_, record_id)| {
                    let hash = RecordChange::hash_of(&Value::Null)?;
                    Ok(self.change(
                        object,
                        record_id.clone(),
                        RecordOp::Deleted,
                        Value::Null,
                        hash,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.inner().records.publish(changes).await?;
            let keys: Vec<String> = gone.into_iter().map(|(key, _)| key).collect();
            let mut tx = self.inner().db.begin_write().await?;
            tx.execute_in("DELETE FROM record_hashes WHERE key IN ", &keys)
                .await?;
            tx.commit().await?;
        }
    }

    fn change(
        &self,
        object: &str,
        record_id: String,
        op: RecordOp,
        data: Value,
        hash: String,
    ) -> RecordChange {
        let profile = self.state.profile.as_ref();
        let digest = Sha256::new()
            .chain_update(self.sync_id.to_string())
            .chain_update([0x1f])
            .chain_update(object)
            .chain_update([0x1f])
            .chain_update(&record_id)
            .chain_update([0x1f])
            .chain_update(&hash)
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        RecordChange {
            id: EventId(uuid::Uuid::new_v8(bytes)),
            workspace: profile
                .map(|p| p.workspace.clone())
                .expect("a running integration has a profile"),
            owner: profile.and_then(|p| p.scope.owner().cloned()),
            integration: self.id,
            object: object.to_lowercase(),
            record_id,
            op,
            data,
            content_hash: hash,
            sync_id: self.sync_id,
            occurred_at: Timestamp::now(),
        }
    }

    /// Whether progress is to be recorded now: always for pages that changed something,
    /// otherwise once [`QUIET_PROGRESS_EVERY`] has passed since the last record.
    fn due_to_record(&self, changed: bool) -> bool {
        let mut recorded = self.recorded.lock().expect("the progress clock's lock");
        if changed || recorded.elapsed() >= QUIET_PROGRESS_EVERY {
            *recorded = Instant::now();
            true
        } else {
            false
        }
    }

    fn count_unrecorded(&self, counts: &[RecordCounts]) {
        let mut unrecorded = self.unrecorded.lock().expect("the unrecorded counts' lock");
        for counts in counts {
            unrecorded.add(counts);
        }
    }

    fn unrecorded(&self) -> RecordCounts {
        *self.unrecorded.lock().expect("the unrecorded counts' lock")
    }

    async fn progress(
        &self,
        object: &str,
        page: u32,
        counts: RecordCounts,
        cursor: RunCursor,
    ) -> Result<(), RunError> {
        self.record(vec![SyncProgressed {
            sync_id: self.sync_id,
            object: object.to_owned(),
            page,
            counts,
            cursor: Some(cursor.encode()),
        }])
        .await
    }

    /// Appends progress to the run's detail, preceded by its `SyncStarted` the first time.
    /// The append continues the detail where this run left it, so a worker that lost the
    /// run's lease to another can add nothing after it.
    async fn record(&self, pages: Vec<SyncProgressed>) -> Result<(), RunError> {
        let mut detail = self.detail.lock().await;
        let now = Timestamp::now();
        let profile =
            self.state.profile.as_ref().ok_or_else(|| {
                RunError::Internal("a connected integration has a profile".into())
            })?;
        let context = context("sync worker");
        let metadata = domain::Metadata {
            workspace: profile.workspace.clone(),
            owner: profile.scope.owner().cloned(),
            actor: context.caller.actor(),
            // Every page of the run shares the run's id as its correlation.
            correlation_id: *self.sync_id.as_uuid(),
            causation_id: None,
            occurred_at: now,
        };
        let mut events = Vec::with_capacity(pages.len() + 1);
        if detail.tip.is_none() {
            events.push(IntegrationEvent::SyncStarted(SyncStarted {
                sync_id: self.sync_id,
                cursor: None,
            }));
        }
        let mut counted = detail.counted;
        let mut last_page = detail.pages;
        for page in pages {
            counted.add(&page.counts);
            last_page = last_page.max(page.page);
            events.push(IntegrationEvent::SyncProgressed(page));
        }
        let new_events = events
            .iter()
            .map(|event| NewEvent::from_domain(event, metadata.clone()))
            .collect();
        let after = detail.tip.unwrap_or(DetailTip::EMPTY);
        let tip = match self
            .inner()
            .detail
            .append(self.sync_id, after, new_events)
            .await
        {
            Ok(tip) => tip,
            // Another worker carries the run on: this one has lost it.
            Err(StoreError::Conflict { .. }) => return Err(RunError::LeaseLost),
            Err(error) => return Err(RunError::Records(error)),
        };
        if detail.tip.is_none() {
            detail.started_at = Some(now);
        }
        detail.tip = Some(tip);
        detail.counted = counted;
        detail.pages = last_page;
        Ok(())
    }

    /// What the integration's stream will not hold of the run's counts: its recorded detail
    /// and the pages it did not record.
    async fn outside_the_stream(&self) -> (RecordCounts, Option<RunDetailHead>) {
        let detail = self.detail.lock().await;
        let mut counts = detail.counted;
        counts.add(&self.unrecorded());
        (counts, detail.head())
    }

    async fn execute(&self, command: IntegrationCommand) -> Result<(), RunError> {
        self.execute_all(std::slice::from_ref(&command)).await
    }

    async fn execute_all(&self, commands: &[IntegrationCommand]) -> Result<(), RunError> {
        let mut held = self.held.lock().await;
        match self
            .inner()
            .repo
            .execute_held_all::<Integration>(
                &self.stream,
                &mut held,
                commands,
                &context("sync worker"),
            )
            .await
        {
            Ok(_) => Ok(()),
            // The integration moved on (disconnected, needs reauth): the run is over.
            Err(RepositoryError::Domain(
                DomainError::Disconnected
                | DomainError::Deleted
                | DomainError::NeedsReauth
                | DomainError::NotFound,
            )) => Err(RunError::Cancelled),
            Err(error) => Err(error.into()),
        }
    }

    async fn watermark(&self, object: &str) -> Result<Option<String>, RunError> {
        let rows: Vec<(String,)> = fetch_all(
            &self.inner().db,
            "SELECT watermark FROM sync_watermarks WHERE integration_id = $1 AND object = $2",
            &[
                Bind::Text(self.id.to_string()),
                Bind::Text(object.to_owned()),
            ],
        )
        .await?;
        Ok(rows.into_iter().next().map(|(w,)| w))
    }

    async fn save_watermark(&self, object: &str, watermark: &str) -> Result<(), RunError> {
        execute(
            &self.inner().db,
            "INSERT INTO sync_watermarks (integration_id, object, watermark) VALUES ($1, $2, $3) \
             ON CONFLICT (integration_id, object) DO UPDATE SET watermark = excluded.watermark",
            &[
                Bind::Text(self.id.to_string()),
                Bind::Text(object.to_owned()),
                Bind::Text(watermark.to_owned()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn forget_watermark(&self, object: &str) -> Result<(), RunError> {
        execute(
            &self.inner().db,
            "DELETE FROM sync_watermarks WHERE integration_id = $1 AND object = $2",
            &[
                Bind::Text(self.id.to_string()),
                Bind::Text(object.to_owned()),
            ],
        )
        .await?;
        Ok(())
    }

    /// Records how the run ended.
    pub(super) async fn finish(&self, outcome: Result<(), RunError>) -> Result<(), RunError> {
        let (unrecorded, detail) = self.outside_the_stream().await;
        let command = match outcome {
            Ok(()) => IntegrationCommand::CompleteSync {
                sync_id: self.sync_id,
                duration_ms: self.started.elapsed().as_millis() as u64,
                unrecorded,
                detail,
            },
            // Whoever cancelled recorded why (a disconnect fails the run itself); a lost
            // lease means another process carries on from the cursor.
            Err(RunError::Cancelled | RunError::LeaseLost | RunError::LeaseHeld) => return Ok(()),
            // The log or the database away: the run stays where it is, to be resumed.
            Err(error) if error.is_transient() => return Err(error),
            Err(RunError::Provider(
                error @ (ProviderError::InvalidGrant { .. } | ProviderError::Unauthorized { .. }),
            )) => {
                let reason = if matches!(error, ProviderError::InvalidGrant { .. }) {
                    domain::integration::ExpiryReason::InvalidGrant
                } else {
                    domain::integration::ExpiryReason::Revoked
                };
                IntegrationCommand::MarkCredentialsExpired {
                    reason,
                    detail: error.to_string(),
                }
            }
            Err(RunError::Provider(error)) => IntegrationCommand::FailSync {
                sync_id: self.sync_id,
                code: error.code().to_owned(),
                message: error.to_string(),
                retryable: error.retryable(),
                unrecorded,
                detail,
            },
            Err(error @ (RunError::Records(_) | RunError::Db(_) | RunError::Repository(_))) => {
                IntegrationCommand::FailSync {
                    sync_id: self.sync_id,
                    code: "storage".into(),
                    message: error.to_string(),
                    retryable: true,
                    unrecorded,
                    detail,
                }
            }
            Err(RunError::Internal(message)) => IntegrationCommand::FailSync {
                sync_id: self.sync_id,
                code: "internal".into(),
                message,
                retryable: false,
                unrecorded,
                detail,
            },
        };
        match self.execute(command).await {
            Ok(()) | Err(RunError::Cancelled) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// A record's data after the mapping: each mapped provider field under its Harmony name (with
/// its transform), or the provider's fields as they are when the object has no mapping.
pub(super) fn map_record(fields: &Map<String, Value>, mapping: Option<&[FieldMapping]>) -> Value {
    let Some(mapping) = mapping else {
        return Value::Object(fields.clone());
    };
    let mut out = Map::new();
    for pair in mapping {
        let value = fields
            .get(&pair.provider_field)
            .cloned()
            .unwrap_or(Value::Null);
        let value = match (value, pair.transform) {
            (Value::String(text), Some(transform)) => Value::String(match transform {
                Transform::Trim => text.trim().to_owned(),
                Transform::Lowercase => text.to_lowercase(),
                Transform::Uppercase => text.to_uppercase(),
            }),
            (value, _) => value,
        };
        out.insert(pair.harmony_field.clone(), value);
    }
    Value::Object(out)
}
