//! Answered pages of Installed, kept while the read model is unchanged. The Installed table
//! changes only when its projection applies events, and the projection moves its checkpoint in
//! the same transaction: so a page answered at checkpoint `p` is the right answer for as long
//! as the checkpoint is still `p`, whichever process runs the projection. Checking that costs
//! one single-row read instead of the page's query and its encoding.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;

/// How many pages are kept; when full, the cache starts over.
const MAX_PAGES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct PageCache {
    pages: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl PageCache {
    /// The page kept under `key` if it was answered at `position`.
    pub(crate) fn get(&self, key: &str, position: u64) -> Option<Bytes> {
        let pages = self.pages.lock().ok()?;
        pages
            .get(key)
            .filter(|(at, _)| *at == position)
            .map(|(_, body)| body.clone())
    }

    pub(crate) fn put(&self, key: String, position: u64, body: Bytes) {
        if let Ok(mut pages) = self.pages.lock() {
            if pages.len() >= MAX_PAGES && !pages.contains_key(&key) {
                pages.clear();
            }
            pages.insert(key, (position, body));
        }
    }
}
