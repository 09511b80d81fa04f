//! How far in the log a piece of work wrote: the repository notes the position of each append
//! made inside [`tracking`], so the API can tell a client the position its request wrote up to
//! and the client can ask a later read to reflect at least that much.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static WRITTEN: Cell<u64>;
}

/// Records that the work being tracked (if any) wrote up to `position`.
pub(crate) fn note(position: u64) {
    let _ = WRITTEN.try_with(|written| written.set(written.get().max(position)));
}

/// Runs `work`, and returns with its output the last log position appends made by it (in its
/// own task, not in tasks it spawned) landed at, `None` when it appended nothing.
pub async fn tracking<F: Future>(work: F) -> (F::Output, Option<u64>) {
    WRITTEN
        .scope(Cell::new(0), async move {
            let output = work.await;
            let written = WRITTEN.with(Cell::get);
            (output, (written > 0).then_some(written))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_position_written_inside_is_returned() {
        let ((), none) = tracking(async {}).await;
        assert_eq!(none, None);
        let ((), some) = tracking(async {
            note(7);
            note(3);
            note(9);
        })
        .await;
        assert_eq!(some, Some(9));
        // Outside a tracked piece of work, noting is harmless.
        note(11);
    }
}
