//! A task's cancel signal: a flag plus the one waker of the run that waits on it.
//! Cheaper than a cancellation token tree (no lock per poll), which matters because
//! the runner polls it once per relayed token.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

#[derive(Debug, Default)]
pub struct CancelSignal {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl CancelSignal {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancelled() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // a cancel between the check and the registration is seen here
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once canceled. Meant for one waiter at a time (the task's run).
    pub fn cancelled(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_cancelled(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn wakes_the_waiter() {
        let c = Arc::new(CancelSignal::default());
        let w = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        tokio::task::yield_now().await;
        assert!(!c.is_cancelled());
        c.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), w)
            .await
            .expect("woken")
            .expect("joined");
        assert!(c.is_cancelled());
    }
}
