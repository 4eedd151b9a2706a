//! The layer's handler tracker: its handlers run to their end, also when
//! their callers leave, and a server waits for them at shutdown.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Tracks the handlers of one layer's guarded requests from their start to
/// their end, so that a server can wait at shutdown for those still running
/// after their callers left (a client that disconnected, a timeout layered
/// outside the layer): the layer runs such a handler on to its end in a
/// task of its own, so that its answer is stored and the caller's retry
/// replays it. It is a task tracker (tokio-util's `TaskTracker` inside);
/// the handlers whose callers wait for their answers count too, from their
/// start, since a caller may leave at any moment.
///
/// A graceful shutdown (`axum::serve(..).with_graceful_shutdown(..)`,
/// tonic's `serve_with_shutdown`) waits for the open connections, not for
/// the handlers of callers that left; a runtime that shuts down cancels
/// those half-way, and a handler that charged a card but had not stored its
/// answer runs again on the retry (on Redis and PostgreSQL once its lease
/// runs out). Each [`build`](super::IdempotencyLayerBuilder::build) makes a
/// layer with a tracker of its own: a server with several layers waits for
/// each.
///
/// ```no_run
/// use axum::{Router, routing::post};
/// use idempotent_core::{Idempotency, http::IdempotencyLayer};
/// use idempotent_core::memory::MemoryStore;
///
/// # async fn serve(listener: tokio::net::TcpListener, stop: tokio::sync::oneshot::Receiver<()>)
/// #     -> std::io::Result<()> {
/// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).single_tenant().build();
/// let tracker = layer.handler_tracker();
/// let app: Router = Router::new()
///     .route("/payments", post(|| async { "charged" }))
///     .route_layer(layer);
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async { let _ = stop.await; })
///     .await?;
/// // The server takes no more requests: let the handlers of callers that left finish.
/// let _ = tokio::time::timeout(std::time::Duration::from_secs(30), tracker.wait()).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HandlerTracker(TaskTracker);

impl HandlerTracker {
    pub(crate) fn new() -> Self {
        let tracker = TaskTracker::new();
        // Closed for good: `wait` returns whenever nothing is running, and
        // handlers still join it (a closed tracker only changes `wait`).
        tracker.close();
        Self(tracker)
    }

    /// How many of the layer's handlers are running now, whether their
    /// callers wait for them or left.
    ///
    /// ```
    /// use idempotent_core::{Idempotency, http::IdempotencyLayer};
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).single_tenant().build();
    /// assert_eq!(layer.handler_tracker().running(), 0);
    /// assert!(layer.handler_tracker().is_idle());
    /// ```
    pub fn running(&self) -> usize {
        self.0.len()
    }

    /// Whether none of the layer's handlers is running now.
    pub fn is_idle(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns at a moment when none of the layer's handlers is running.
    /// Call it once the server takes no more requests (after a graceful
    /// shutdown, say); while requests still arrive, it may never return.
    ///
    /// ```
    /// use idempotent_core::{Idempotency, http::IdempotencyLayer};
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).single_tenant().build();
    /// layer.handler_tracker().wait().await; // nothing runs: at once
    /// # }
    /// ```
    pub async fn wait(&self) {
        self.0.wait().await;
    }

    /// Counts one handler as running until the token is dropped.
    pub(crate) fn token(&self) -> TaskTrackerToken {
        self.0.token()
    }
}

impl fmt::Debug for HandlerTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerTracker")
            .field("running", &self.running())
            .finish()
    }
}

/// Polls a future where it is awaited; dropped unfinished, it spawns the
/// rest of the future on the current runtime, so that it still runs to its
/// end. Its layer's [`HandlerTracker`] counts it from the start to the
/// end, wherever it runs: the connection that carried it may close
/// (and a graceful shutdown may end) a moment before the future is moved.
///
/// Running in place, rather than in a task from the start, keeps the
/// handler on the connection's thread. A task spawned for every request
/// cost more than the layer's own work: the task itself, copies of the
/// large future into and out of it, wake-ups of the other worker, and, as
/// that worker steals the task, frees across threads (the request's
/// headers, the task), which glibc's allocator serializes with a lock. The
/// `payments-server` used about 2.5 µs less CPU per request in place
/// (`BENCHMARKS.md`).
pub(crate) struct RunToEnd<F: Future + Send + 'static> {
    future: Option<Pin<Box<F>>>,
    /// Set while the future is polled: if the poll panics, the future is
    /// dropped with the unwinding, never spawned again.
    polling: bool,
    /// Counts it in the layer's tracker; moved into its task.
    running: Option<TaskTrackerToken>,
}

impl<F: Future + Send + 'static> RunToEnd<F> {
    pub(crate) fn new(tracker: &HandlerTracker, future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
            polling: false,
            running: Some(tracker.token()),
        }
    }
}

impl<F: Future + Send + 'static> Future for RunToEnd<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(future) = this.future.as_mut() else {
            panic!("`RunToEnd` polled after it completed");
        };
        this.polling = true;
        let poll = future.as_mut().poll(cx);
        this.polling = false;
        if poll.is_ready() {
            this.future = None;
            this.running = None;
        }
        poll
    }
}

impl<F: Future + Send + 'static> Drop for RunToEnd<F> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        if self.polling {
            return; // the future panicked
        }
        match tokio::runtime::Handle::try_current() {
            // The spans the future made when it was first polled go with
            // it. A runtime that is shutting down drops the new task at
            // once; the engine then releases the key (the memory store at
            // once, the others when the lease runs out).
            Ok(runtime) => {
                let running = self.running.take();
                drop(runtime.spawn(async move {
                    let _ = future.await;
                    drop(running);
                }));
            }
            // Dropped outside any tokio runtime (another executor drives
            // the service): nowhere to finish, so the handler is cancelled
            // half-way and the engine releases the key.
            Err(_) => {
                tracing::warn!(
                    "a guarded request was dropped outside a tokio runtime: its handler is \
                     cancelled, and a retry runs it again"
                );
                drop(future);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use super::*;

    /// Panics on its first poll, and is ready on any later one.
    struct PanicsOnce(Arc<AtomicUsize>);

    impl Future for PanicsOnce {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            assert!(
                self.0.fetch_add(1, Ordering::SeqCst) > 0,
                "the handler failed"
            );
            Poll::Ready(())
        }
    }

    /// A future that panicked is dropped with the unwinding, never handed to
    /// a task that would poll it again.
    #[tokio::test]
    async fn a_future_that_panicked_is_never_polled_again() {
        let polls = Arc::new(AtomicUsize::new(0));
        let tracker = HandlerTracker::new();
        let mut run = Box::pin(RunToEnd::new(&tracker, PanicsOnce(Arc::clone(&polls))));
        let mut cx = Context::from_waker(Waker::noop());
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(&mut cx)));
        assert!(polled.is_err(), "the panic is passed on");
        drop(run);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert!(tracker.is_idle());
    }

    /// Dropped unfinished, the future runs to its end in a task; it is
    /// counted from its start to its end, and `wait` waits for it, also
    /// from two callers at once.
    #[tokio::test]
    async fn a_future_dropped_unfinished_runs_to_its_end_and_is_waited_for() {
        let finished = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&finished);
        let tracker = HandlerTracker::new();
        let mut run = Box::pin(RunToEnd::new(&tracker, async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            done.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(tracker.running(), 1, "counted while it runs in place");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        drop(run);
        assert_eq!(tracker.running(), 1, "and once it is moved");
        let (first, second) = (tracker.clone(), tracker.clone());
        tokio::join!(first.wait(), second.wait());
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert!(tracker.is_idle());
    }

    /// A future that ends where it is polled stops counting at once.
    #[tokio::test]
    async fn a_finished_future_is_no_longer_counted() {
        let tracker = HandlerTracker::new();
        let run = RunToEnd::new(&tracker, async { 7 });
        assert_eq!(tracker.running(), 1);
        assert_eq!(run.await, 7);
        assert!(tracker.is_idle());
        tracker.wait().await;
    }
}
