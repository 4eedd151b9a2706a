//! Handlers whose callers left: they run to their end, and a server can
//! wait for them at shutdown.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;

/// The handlers of guarded requests whose callers left before the answer (a
/// client that disconnected, a timeout layered outside the layer). The
/// layer runs them on to their end, so that their answers are stored and
/// the callers' retries replay them; this is how a server waits for them
/// when it shuts down, after its connections have closed.
///
/// Without the wait, a runtime that shuts down cancels them half-way: a
/// handler that charged a card but had not stored its answer would run
/// again on the retry (on Redis and PostgreSQL once its lease runs out).
///
/// ```no_run
/// use axum::{Router, routing::post};
/// use idempotent_core::{Idempotency, MemoryStore, http::IdempotencyLayer};
///
/// # async fn serve(listener: tokio::net::TcpListener, stop: tokio::sync::oneshot::Receiver<()>)
/// #     -> std::io::Result<()> {
/// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()));
/// let detached = layer.detached_handlers();
/// let app: Router = Router::new()
///     .route("/payments", post(|| async { "charged" }))
///     .route_layer(layer);
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async { let _ = stop.await; })
///     .await?;
/// // The connections are closed; let the handlers of callers that left finish.
/// let _ = tokio::time::timeout(std::time::Duration::from_secs(30), detached.wait()).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct DetachedHandlers(TaskTracker);

impl DetachedHandlers {
    /// How many are running now.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is running now.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns once every handler running now, and every one detached while
    /// it waits, has finished.
    pub async fn wait(&self) {
        self.0.close();
        self.0.wait().await;
        self.0.reopen();
    }
}

impl fmt::Debug for DetachedHandlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedHandlers")
            .field("running", &self.len())
            .finish()
    }
}

/// Polls a future where it is awaited; dropped unfinished, it spawns the
/// rest of the future on the current runtime, as one of the layer's
/// [`DetachedHandlers`], so that it still runs to its end.
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
    detached: DetachedHandlers,
}

impl<F: Future + Send + 'static> RunToEnd<F> {
    pub(crate) fn new(detached: DetachedHandlers, future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
            polling: false,
            detached,
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
            Ok(runtime) => drop(self.detached.0.spawn_on(
                async move {
                    let _ = future.await;
                },
                &runtime,
            )),
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
        let detached = DetachedHandlers::default();
        let mut run = Box::pin(RunToEnd::new(
            detached.clone(),
            PanicsOnce(Arc::clone(&polls)),
        ));
        let mut cx = Context::from_waker(Waker::noop());
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(&mut cx)));
        assert!(polled.is_err(), "the panic is passed on");
        drop(run);
        detached.wait().await;
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    /// Dropped unfinished, the future runs to its end in a task, which
    /// `wait` waits for.
    #[tokio::test]
    async fn a_future_dropped_unfinished_runs_to_its_end_and_is_waited_for() {
        let finished = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&finished);
        let detached = DetachedHandlers::default();
        let mut run = Box::pin(RunToEnd::new(detached.clone(), async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            done.fetch_add(1, Ordering::SeqCst);
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert!(
            detached.is_empty(),
            "nothing detached while it runs in place"
        );
        drop(run);
        assert_eq!(detached.len(), 1);
        detached.wait().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert!(detached.is_empty());
    }
}
