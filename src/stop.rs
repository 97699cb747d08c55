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
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;

/// A token's cancellation, as [`StopWait`]s see it.
#[derive(Clone, Debug)]
pub struct Stop {
    stopped: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Stop {
    /// Follows `token`: once it is cancelled, the flag is set, then every wait is woken. Must
    /// be called inside a tokio runtime.
    pub fn follow(token: &CancellationToken) -> Self {
        let stop = Stop {
            stopped: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(Notify::new()),
        };
        let (token, set) = (token.clone(), stop.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            set.stopped.store(true, Ordering::SeqCst);
            set.notify.notify_waiters();
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
            registered: None,
        }
    }
}

/// Ready once its [`Stop`] is stopped.
pub struct StopWait {
    stopped: Arc<AtomicBool>,
    notified: Pin<Box<OwnedNotified>>,
    /// The waker the waiter list holds for this wait.
    registered: Option<Waker>,
}

impl Future for StopWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if let Some(waker) = &self.registered
            && waker.will_wake(cx.waker())
        {
            // The waiter list wakes this task when the stop comes, after setting the flag.
            return Poll::Pending;
        }
        if self.notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
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
