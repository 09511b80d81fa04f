//! Answered pages of Installed, kept while the read model is unchanged. The Installed table
//! changes only when its projection applies events, and the projection moves its checkpoint in
//! the same transaction, or when a rebuild is swapped in, which raises the checkpoint's
//! generation in the same transaction: so a page answered at (position, generation) is the
//! right answer for as long as the checkpoint still stands there, whichever process runs the
//! projection. Checking that costs one single-row read instead of the page's query and its
//! encoding.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;

/// Where the read model stood when a page was answered: its position and generation.
pub(crate) type Stamp = (u64, u64);

/// How many pages are kept; when full, the cache starts over.
const MAX_PAGES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct PageCache {
    pages: Mutex<HashMap<String, (Stamp, Bytes)>>,
}

impl PageCache {
    /// The page kept under `key` if it was answered at `stamp`.
    pub(crate) fn get(&self, key: &str, stamp: Stamp) -> Option<Bytes> {
        let pages = self.pages.lock().ok()?;
        pages
            .get(key)
            .filter(|(at, _)| *at == stamp)
            .map(|(_, body)| body.clone())
    }

    pub(crate) fn put(&self, key: String, stamp: Stamp, body: Bytes) {
        if let Ok(mut pages) = self.pages.lock() {
            if pages.len() >= MAX_PAGES && !pages.contains_key(&key) {
                pages.clear();
            }
            pages.insert(key, (stamp, body));
        }
    }
}
