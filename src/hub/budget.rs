//! The hub's one global budget for what it loads on behalf of readers: catch-up pages of
//! streams and the pages of polls. A read first checks there is room for what it may load
//! (`max_read_bytes`), then takes what it actually loaded and gives it back once the page is
//! delivered, so a thousand slow readers cannot hold more than the budget (give or take the
//! reads in flight). When it is spent, new reads are refused (the caller answers `503` with
//! `Retry-After`) and streams already open wait their turn: a slow consumer costs a cursor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes the hub may hold for readers at once. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Woken whenever bytes are given back, for streams waiting their turn.
    freed: Notify,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Takes `bytes` already loaded, even past the limit: a read checks for room before it
    /// loads (at most its `max_read_bytes`), then accounts for what it actually loaded, so
    /// many small reads at once never spend the budget on pages they do not hold.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Reservation {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        metrics::gauge!("plexus_read_budget_bytes").set(self.used() as f64);
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Waits until `bytes` fit (for streams already open, before they load a page).
    pub async fn wait_for_room(&self, bytes: usize) {
        loop {
            // Registered before the check: a release between the two still wakes us.
            let freed = self.freed.notified();
            if self.has_room(bytes) {
                return;
            }
            freed.await;
        }
    }

    /// Whether `bytes` would fit now (a new read's admission check).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes.min(self.limit)) <= self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            metrics::gauge!("plexus_read_budget_bytes").set(self.used() as f64);
            self.freed.notify_waiters();
        }
    }
}

/// Bytes held from the budget; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_and_come_back() {
        let budget = Budget::new(100);
        let a = budget.take(10);
        assert!(budget.has_room(90));
        assert!(!budget.has_room(91));
        let b = budget.take(140);
        assert_eq!(budget.used(), 150);
        assert!(!budget.has_room(0));
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.has_room(100));
    }
}
