//! The response future of [`IdempotencyService`](super::IdempotencyService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::ResponseBody;

/// What a guarded request's future is: the key claimed, the handler run
/// (to its end, also if this future is dropped), its answer stored.
pub(crate) type Guarded<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`IdempotencyService`](super::IdempotencyService),
    /// for an inner service whose future is `F`, whose response body is
    /// `B` and whose error is `E`: the inner future itself for a request
    /// that passes through, the layer's answer at once for a request it
    /// refuses from its head (a missing or malformed key), or the guarded
    /// request's work.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] future: F },
        Answered { response: Option<Response<ResponseBody<B>>> },
        Guarded { future: Guarded<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// The inner service's future, its response passed on untouched.
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    /// The layer's answer, at once.
    pub(crate) fn answered(response: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Answered {
                response: Some(response),
            },
        }
    }

    /// A guarded request's work.
    pub(crate) fn guarded(future: Guarded<B, E>) -> Self {
        Self {
            kind: Kind::Guarded { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            KindProj::Answered { response } => {
                let response = response
                    .take()
                    .expect("`ResponseFuture` polled after it completed");
                Poll::Ready(Ok(response))
            }
            KindProj::Guarded { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Answered { .. } => "answered",
            Kind::Guarded { .. } => "guarded",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
