//! The hub's one global budget for what it loads on behalf of readers: catch-up pages of
//! streams and the pages of polls. Each read reserves what it may load before it loads it and
//! gives it back when the page is delivered, so a thousand slow readers cannot add up to more
//! than the budget. When it is spent, new reads are refused (the caller answers `503` with
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

    /// Reserves `bytes` if they fit; `None` when the budget is spent.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let bytes = bytes.min(self.limit);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .ok()?;
        metrics::gauge!("plexus_read_budget_bytes").set(self.used() as f64);
        Some(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Reserves `bytes`, waiting until they fit (for streams already open).
    pub async fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        loop {
            // Registered before the attempt: a release between the two still wakes us.
            let freed = self.freed.notified();
            if let Some(r) = self.try_reserve(bytes) {
                return r;
            }
            freed.await;
        }
    }

    /// Whether `bytes` would fit now (a new read's admission check).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used() + bytes.min(self.limit) <= self.limit
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

impl Reservation {
    /// Keeps only `bytes` of the reservation (what a read actually loaded).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
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
    fn reservations_add_up_to_the_limit_and_come_back() {
        let budget = Budget::new(100);
        let mut a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(50).is_none());
        a.shrink_to(10);
        let b = budget.try_reserve(90).unwrap();
        assert!(!budget.has_room(1));
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
