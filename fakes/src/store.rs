//! The records of one fake collection, with the change sequence the providers' incremental
//! feeds read: sync tokens, history ids and export cursors are positions in it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One record and the change that last touched it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) data: Map<String, Value>,
    pub(crate) seq: u64,
    pub(crate) deleted: bool,
}

/// Records by id (kept after deletion, as tombstones), and the sequence of their changes.
#[derive(Debug, Default)]
pub(crate) struct Collection {
    records: BTreeMap<String, Entry>,
    seq: u64,
    /// Positions before this one are forgotten: a token older than it is stale.
    floor: u64,
}

impl Collection {
    /// Creates or replaces a record; returns its change's position.
    pub(crate) fn put(&mut self, id: &str, data: Map<String, Value>) -> u64 {
        self.seq += 1;
        self.records.insert(
            id.to_owned(),
            Entry {
                data,
                seq: self.seq,
                deleted: false,
            },
        );
        self.seq
    }

    /// Deletes a live record; `false` when there was none.
    pub(crate) fn delete(&mut self, id: &str) -> bool {
        match self.records.get_mut(id) {
            Some(entry) if !entry.deleted => {
                self.seq += 1;
                entry.seq = self.seq;
                entry.deleted = true;
                true
            }
            _ => false,
        }
    }

    /// A live record.
    pub(crate) fn get(&self, id: &str) -> Option<&Entry> {
        self.records.get(id).filter(|entry| !entry.deleted)
    }

    /// Live records in id order, from `offset`, at most `limit`; and the next page's offset.
    pub(crate) fn page(
        &self,
        offset: usize,
        limit: usize,
    ) -> (Vec<(&String, &Entry)>, Option<usize>) {
        let mut live = self.records.iter().filter(|(_, entry)| !entry.deleted);
        let items: Vec<_> = live.by_ref().skip(offset).take(limit).collect();
        let more = live.next().is_some();
        let next = more.then_some(offset + items.len());
        (items, next)
    }

    /// Live records, in id order.
    pub(crate) fn live(&self) -> impl DoubleEndedIterator<Item = (&String, &Entry)> {
        self.records.iter().filter(|(_, entry)| !entry.deleted)
    }

    /// Changes after position `since` (deletions included), in the order they happened.
    pub(crate) fn changes_since(&self, since: u64) -> Vec<(&String, &Entry)> {
        let mut changed: Vec<_> = self
            .records
            .iter()
            .filter(|(_, entry)| entry.seq > since)
            .collect();
        changed.sort_by_key(|(_, entry)| entry.seq);
        changed
    }

    /// The position of the latest change.
    pub(crate) fn head(&self) -> u64 {
        self.seq
    }

    /// Forgets every position so far: tokens issued until now are stale.
    pub(crate) fn expire_tokens(&mut self) {
        // Tokens issued from now on start past every forgotten one.
        self.seq += 1;
        self.floor = self.seq;
    }

    /// Whether a token at position `seq` can no longer be served.
    pub(crate) fn is_stale(&self, seq: u64) -> bool {
        seq < self.floor || seq > self.seq
    }
}

/// A number-carrying opaque token (`prefix` then digits), as fakes hand out page and sync
/// tokens; `None` for anything else.
pub(crate) fn parse_token(token: &str, prefix: &str) -> Option<u64> {
    token.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(name: &str) -> Map<String, Value> {
        json!({ "name": name })
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn pages_changes_and_stale_positions() {
        let mut collection = Collection::default();
        for n in 1..=5 {
            collection.put(&format!("r{n}"), record(&n.to_string()));
        }
        let (first, next) = collection.page(0, 2);
        assert_eq!(first.len(), 2);
        assert_eq!(next, Some(2));
        let (last, next) = collection.page(4, 2);
        assert_eq!((last.len(), next), (1, None));

        let mark = collection.head();
        collection.put("r2", record("two"));
        assert!(collection.delete("r3"));
        assert!(!collection.delete("r3"));
        let changes: Vec<_> = collection
            .changes_since(mark)
            .into_iter()
            .map(|(id, entry)| (id.clone(), entry.deleted))
            .collect();
        assert_eq!(changes, [("r2".to_owned(), false), ("r3".to_owned(), true)]);
        assert_eq!(collection.live().count(), 4);
        assert!(!collection.is_stale(mark));
        collection.expire_tokens();
        assert!(collection.is_stale(mark));
        assert!(!collection.is_stale(collection.head()));
        assert_eq!(parse_token("s12", "s"), Some(12));
        assert_eq!(parse_token("x12", "s"), None);
    }
}
