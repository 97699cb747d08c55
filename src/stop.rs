//! [`Stop`]: a shutdown that a waiting loop can look at once per wake-up for next to nothing.
//!
//! A stream's loop waits on several things at once (its events, the shutdown, a keepalive
//! timer), and `select!` polls every one of them each time any one wakes the task: with one
//! delivery per wake-up, the shutdown is polled once per delivered message, for every
//! subscriber. A `CancellationToken`'s future takes two locks that every waiter shares at each
//! poll (the token's state, then its waiter list to store the waker again); the fan-out
//! profile at 10,000 subscribers showed them (docs/BENCHMARKS.md).
//!
//! A [`StopWait`] answers from a flag that is set before any waiter is woken, and registers
//! with the waiter list only when the task's waker differs from the one it registered: a
//! wait polled again by the same task costs one read of the flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;

/// A token's cancellation, as [`StopWait`]s see it.
#[derive(Clone, Debug)]
pub struct Stop {
    stopped: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// A stop of its own, stopped by [`Stop::stop`].
    pub fn new() -> Self {
        Stop {
            stopped: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Stops: the flag is set, then every wait is woken.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Follows `token`: stops once it is cancelled. Must be called inside a tokio runtime.
    pub fn follow(token: &CancellationToken) -> Self {
        let stop = Stop::new();
        let (token, set) = (token.clone(), stop.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            set.stop();
        });
        stop
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// A future ready once stopped.
    pub fn wait(&self) -> StopWait {
        StopWait {
            // Made before the flag is first read: a wake-up between the two still reaches it.
            notified: Box::pin(self.notify.clone().notified_owned()),
            stopped: self.stopped.clone(),
            registered: Registered::Nothing,
        }
    }
}

/// Ready once its [`Stop`] is stopped.
pub struct StopWait {
    stopped: Arc<AtomicBool>,
    notified: Pin<Box<OwnedNotified>>,
    /// The waker the waiter list holds for this wait.
    registered: Registered,
}

enum Registered {
    /// Not polled yet.
    Nothing,
    /// The polling task's own waker, as long as it stays the same one.
    Task(Waker),
    /// A relay, once the polling waker changed: a waker of `futures`' `FuturesUnordered` (a
    /// WebSocket's subscriptions) never says it `will_wake` like its own clone, which made
    /// every poll register with the waiter list again, under its lock (the fan-out profile).
    /// The waiter list holds the relay's waker; a poll only hands the relay the task's.
    Relay(Arc<Relay>),
}

/// Wakes whichever waker it was last given.
struct Relay(AtomicWaker);

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.0.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake();
    }
}

impl Future for StopWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let waker = match &self.registered {
            Registered::Task(waker) if waker.will_wake(cx.waker()) => {
                // The waiter list wakes this task when the stop comes, after setting the flag.
                return Poll::Pending;
            }
            Registered::Relay(relay) => {
                relay.0.register(cx.waker());
                // A stop between the first look and the registration woke the old waker.
                if self.stopped.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
            Registered::Nothing => cx.waker().clone(),
            Registered::Task(_) => {
                let relay = Arc::new(Relay(AtomicWaker::new()));
                relay.0.register(cx.waker());
                self.registered = Registered::Relay(relay.clone());
                Waker::from(relay)
            }
        };
        if self
            .notified
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            return Poll::Ready(());
        }
        if matches!(self.registered, Registered::Nothing) {
            self.registered = Registered::Task(waker);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_polled_many_times_by_one_task_ends_at_the_stop() {
        let token = CancellationToken::new();
        let stop = Stop::follow(&token);
        let mut wait = stop.wait();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let cancel = token.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                tx.send(i).expect("open");
                tokio::task::yield_now().await;
            }
            cancel.cancel();
            std::future::pending::<()>().await;
        });
        let mut got = 0;
        loop {
            tokio::select! {
                Some(_) = rx.recv() => got += 1,
                () = &mut wait => break,
            }
        }
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 100);
        assert!(stop.is_stopped());
        // A wait made after the stop is ready at once.
        stop.wait().await;
    }

    #[tokio::test]
    async fn a_wait_polled_by_ever_new_wakers_is_woken_through_the_last() {
        let stop = Stop::new();
        let mut wait = stop.wait();
        // Polled with one waker, then awaited by a task of its own: the change of waker
        // hands the wait over to a relay.
        for _ in 0..3 {
            assert!(futures_util::FutureExt::now_or_never(&mut wait).is_none());
        }
        let waiter = tokio::spawn(wait);
        tokio::task::yield_now().await;
        stop.stop();
        waiter.await.expect("woken");
    }

    #[tokio::test]
    async fn a_stop_of_its_own_wakes_its_waits() {
        let stop = Stop::new();
        let waiter = tokio::spawn(stop.wait());
        tokio::task::yield_now().await;
        assert!(!stop.is_stopped());
        stop.stop();
        waiter.await.expect("woken");
        assert!(stop.is_stopped());
    }

    #[tokio::test]
    async fn a_wait_moved_to_another_task_is_still_woken() {
        let token = CancellationToken::new();
        let stop = Stop::follow(&token);
        let mut wait = stop.wait();
        // Polled once with another waker, then awaited by a task.
        assert!(futures_util::FutureExt::now_or_never(&mut wait).is_none());
        let waiter = tokio::spawn(wait);
        tokio::task::yield_now().await;
        token.cancel();
        waiter.await.expect("woken");
    }
}
