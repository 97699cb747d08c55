//! A live feed: a broadcast of numbered messages, and the readers waiting for the next one.
//! The hub keeps one per topic (`hub`); the fan-out baseline one for its frames (`lab::raw`),
//! so that both wake their readers the same, fastest way found.
//!
//! The messages go through tokio's broadcast, which keeps them for readers that fall a little
//! behind. The readers do not wait inside it: its receive is a future that must stay pinned
//! while it waits, so a reader polled by hand (a subscription) kept it in a box of its own,
//! and a send walked the waiting futures, one box each. At 10,000 readers both are a cache
//! miss per reader per message (the fan-out profile, docs/BENCHMARKS.md). Here a waiting
//! reader leaves its waker in a slot of one array, which a send empties in one pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// The sending side. Each message carries a number (a topic's seq) that grows from one send
/// to the next.
pub struct Feed<T> {
    tx: broadcast::Sender<T>,
    /// Read by every reader at every wake-up; written once a send. On a line of its own: the
    /// slots' lock beside it is written by every reader that goes to wait.
    signal: Line<Signal>,
    slots: Line<Mutex<Slots>>,
}

/// Keeps its contents on cache lines of their own.
#[repr(align(128))]
struct Line<T>(T);

struct Signal {
    /// The highest number sent: a reader already past it has nothing to receive.
    newest: AtomicU64,
    /// Counts the sends that woke readers. A reader whose waker went into its slot in the
    /// current round is still there (only a send, or the reader leaving, takes it out).
    round: AtomicU64,
}

#[derive(Default)]
struct Slots {
    /// One per reader; `Some` while it waits.
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    /// How many slots are `Some`.
    waiting: usize,
    /// The list a send takes the wakers out into, kept for its room.
    spare: Vec<Waker>,
}

impl<T: Clone> Feed<T> {
    pub fn new(capacity: usize) -> Self {
        Feed {
            tx: broadcast::Sender::new(capacity),
            signal: Line(Signal {
                newest: AtomicU64::new(0),
                round: AtomicU64::new(0),
            }),
            slots: Line(Mutex::new(Slots::default())),
        }
    }

    pub fn receiver_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The highest number sent so far.
    pub fn newest(&self) -> u64 {
        self.signal.0.newest.load(Ordering::Acquire)
    }

    /// A reader from the next message sent on.
    pub fn subscribe(self: &Arc<Self>) -> Receiver<T> {
        let rx = self.tx.subscribe();
        let mut slots = self.lock();
        let slot = slots.free.pop().unwrap_or_else(|| {
            slots.wakers.push(None);
            slots.wakers.len() - 1
        });
        drop(slots);
        Receiver {
            rx,
            feed: self.clone(),
            slot,
            round: None,
            waker: None,
        }
    }

    /// Sends message `number` and wakes the readers waiting for one.
    pub fn send(&self, message: T, number: u64) {
        // Nobody subscribed is no error.
        let _ = self.tx.send(message);
        // After the send: a reader that sees this number finds the message in the broadcast.
        self.signal.0.newest.fetch_max(number, Ordering::AcqRel);
        self.wake();
    }

    fn wake(&self) {
        let mut woken = {
            let mut slots = self.lock();
            if slots.waiting == 0 {
                return;
            }
            // Under the lock: a reader that registers from here on is in the next round.
            self.signal.0.round.fetch_add(1, Ordering::AcqRel);
            let mut woken = std::mem::take(&mut slots.spare);
            woken.reserve(slots.waiting);
            woken.extend(slots.wakers.iter_mut().filter_map(Option::take));
            slots.waiting = 0;
            woken
        };
        for waker in woken.drain(..) {
            waker.wake();
        }
        let mut slots = self.lock();
        if slots.spare.capacity() < woken.capacity() {
            slots.spare = woken;
        }
    }
}

impl<T> Feed<T> {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A reader of a feed.
pub struct Receiver<T> {
    rx: broadcast::Receiver<T>,
    feed: Arc<Feed<T>>,
    slot: usize,
    /// The round its waker went into its slot in, if it did.
    round: Option<u64>,
    /// The waker it left there.
    waker: Option<Waker>,
}

impl<T: Clone> Receiver<T> {
    /// The next message sent, or why there is none (lagged past the broadcast's buffer, or
    /// closed). `after` is the number the reader is at: while nothing above it was sent, the
    /// broadcast is not asked (its empty answer takes its lock); what it holds at or below
    /// `after` is received once something above it was sent.
    pub fn poll_recv(&mut self, after: u64, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        let mut registered = false;
        loop {
            if self.feed.signal.0.newest.load(Ordering::Acquire) > after {
                match self.rx.try_recv() {
                    Ok(message) => return Poll::Ready(Ok(message)),
                    Err(TryRecvError::Lagged(n)) => return Poll::Ready(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => return Poll::Ready(Err(RecvError::Closed)),
                    Err(TryRecvError::Empty) => {}
                }
            }
            if registered || self.is_waiting(cx.waker()) {
                return Poll::Pending;
            }
            // Then look again: a send before the registration is seen by that look, one after
            // it wakes this reader.
            self.register(cx.waker());
            registered = true;
        }
    }

    /// Waits for the next message sent (see [`Receiver::poll_recv`]).
    pub async fn recv(&mut self, after: u64) -> Result<T, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(after, cx)).await
    }

    /// Whether a message numbered above `after` was sent: one the reader may still find in
    /// the broadcast. Asks no lock.
    pub fn sent_above(&self, after: u64) -> bool {
        self.feed.newest() > after
    }

    /// A message already sent and not yet received, without waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Whether its waker for this task is in its slot.
    fn is_waiting(&self, waker: &Waker) -> bool {
        self.round == Some(self.feed.signal.0.round.load(Ordering::Acquire))
            && self.waker.as_ref().is_some_and(|w| w.will_wake(waker))
    }

    fn register(&mut self, waker: &Waker) {
        let mut slots = self.feed.lock();
        let round = self.feed.signal.0.round.load(Ordering::Acquire);
        if let Some(slot) = slots.wakers.get_mut(self.slot) {
            let was_waiting = slot.replace(waker.clone()).is_some();
            if !was_waiting {
                slots.waiting += 1;
            }
        }
        drop(slots);
        self.round = Some(round);
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut slots = self.feed.lock();
        if slots
            .wakers
            .get_mut(self.slot)
            .and_then(Option::take)
            .is_some()
        {
            slots.waiting -= 1;
        }
        slots.free.push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Sends `n`, numbered `n`.
    fn send(feed: &Feed<u64>, n: u64) {
        feed.send(n, n);
    }

    fn got(polled: Poll<Result<u64, RecvError>>) -> Option<u64> {
        match polled {
            Poll::Ready(Ok(n)) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn a_waiting_reader_is_woken_once_a_send_and_receives_in_order() {
        let feed = Arc::new(Feed::new(16));
        let mut rx = feed.subscribe();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(0, &mut cx).is_pending());
        // Polled again while waiting: no second registration, still pending.
        assert!(rx.poll_recv(0, &mut cx).is_pending());
        send(&feed, 1);
        send(&feed, 2);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken once, by the first send"
        );
        assert_eq!(got(rx.poll_recv(0, &mut cx)), Some(1));
        assert_eq!(got(rx.poll_recv(1, &mut cx)), Some(2));
        assert!(rx.poll_recv(2, &mut cx).is_pending());
        send(&feed, 3);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(got(rx.poll_recv(2, &mut cx)), Some(3));
    }

    #[test]
    fn what_was_sent_at_or_below_the_position_is_received_once_more_follows() {
        let feed = Arc::new(Feed::new(16));
        let mut rx = feed.subscribe();
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(!rx.sent_above(0));
        send(&feed, 4);
        assert!(rx.sent_above(3) && !rx.sent_above(4));
        // The reader is at 4 already (it read the store): nothing to receive yet.
        assert!(rx.poll_recv(4, &mut cx).is_pending());
        send(&feed, 5);
        assert_eq!(got(rx.poll_recv(4, &mut cx)), Some(4));
        assert_eq!(got(rx.poll_recv(4, &mut cx)), Some(5));
    }

    #[test]
    fn a_reader_that_falls_behind_the_buffer_is_told() {
        let feed = Arc::new(Feed::new(2));
        let mut rx = feed.subscribe();
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        for n in 1..=5 {
            send(&feed, n);
        }
        assert!(matches!(
            rx.poll_recv(0, &mut cx),
            Poll::Ready(Err(RecvError::Lagged(_)))
        ));
    }

    #[test]
    fn a_reader_polled_by_another_task_is_woken_there() {
        let feed = Arc::new(Feed::new(16));
        let mut rx = feed.subscribe();
        let (first, waker1) = counting();
        let (second, waker2) = counting();
        assert!(
            rx.poll_recv(0, &mut Context::from_waker(&waker1))
                .is_pending()
        );
        assert!(
            rx.poll_recv(0, &mut Context::from_waker(&waker2))
                .is_pending()
        );
        send(&feed, 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn readers_that_leave_give_their_slot_back_and_are_not_woken() {
        let feed = Arc::new(Feed::new(16));
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut rx = feed.subscribe();
            assert!(rx.poll_recv(0, &mut cx).is_pending());
        }
        let slots = feed.lock();
        assert_eq!(slots.wakers.len(), 1, "one slot, reused");
        assert_eq!(slots.waiting, 0);
        drop(slots);
        send(&feed, 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_readers_on_two_threads_receive_every_message() {
        let feed = Arc::new(Feed::new(1024));
        let readers: Vec<_> = (0..64)
            .map(|_| {
                let mut rx = feed.subscribe();
                tokio::spawn(async move {
                    let mut after = 0;
                    while after < 500 {
                        let n = rx.recv(after).await.expect("no lag within the buffer");
                        assert_eq!(n, after + 1);
                        after = n;
                    }
                    after
                })
            })
            .collect();
        for n in 1..=500 {
            send(&feed, n);
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for reader in readers {
            assert_eq!(reader.await.expect("the reader ran"), 500);
        }
    }
}
