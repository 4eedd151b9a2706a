//! The bodies the layer hands on: to the inner service, a request's body,
//! read whole when the request is guarded; to the caller, the inner
//! service's body, or a whole one (a fresh answer the layer read to store
//! it, a replay, the layer's own answer). Trailers go with them.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A body held whole: its bytes, then its trailers.
#[derive(Debug, Default)]
struct Whole {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Whole {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: Some(data).filter(|data| !data.is_empty()),
            trailers: trailers.filter(|trailers| !trailers.is_empty()),
        }
    }

    fn poll_frame(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}

/// A frame of any body, its data as [`Bytes`] (without a copy when it is
/// `Bytes` already).
fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

pin_project! {
    /// Either a body held whole or the body `B` untouched: what both
    /// [`RequestBody`] and [`ResponseBody`] are.
    #[project = EitherProj]
    enum Either<B> {
        Whole { whole: Whole },
        Inner { #[pin] body: B },
    }
}

impl<B> Either<B> {
    fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self::Whole {
            whole: Whole::new(data, trailers),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Whole { .. } => "whole",
            Self::Inner { .. } => "inner",
        }
    }
}

impl<B: Body> Body for Either<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            EitherProj::Whole { whole } => whole.poll_frame().map_err(|never| match never {}),
            EitherProj::Inner { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(to_bytes))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole { whole } => whole.is_end_stream(),
            Self::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole { whole } => whole.size_hint(),
            Self::Inner { body } => body.size_hint(),
        }
    }
}

/// The [`Body`] of a wrapper of [`Either`] (its field `kind`).
macro_rules! delegate_body {
    ($body:ident) => {
        impl<B: Body> Body for $body<B> {
            type Data = Bytes;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
                self.project().kind.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.kind.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.kind.size_hint()
            }
        }

        impl<B> fmt::Debug for $body<B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($body))
                    .field("kind", &self.kind.kind())
                    .finish_non_exhaustive()
            }
        }
    };
}

pin_project! {
    /// The body of a request as [`IdempotencyLayer`](super::IdempotencyLayer)
    /// hands it to its inner service: read whole (bytes and trailers) for a
    /// guarded request, whose body the fingerprint covers; the caller's
    /// body `B`, untouched, for a request that passes through (a safe
    /// method, or no key where keys are not required).
    ///
    /// Its data is [`Bytes`] whatever `B`'s is, so axum's routers and
    /// tonic's servers take it as it is:
    ///
    /// ```
    /// use http_body_util::BodyExt;
    /// use idempotent_core::http::RequestBody;
    ///
    /// /// An inner service's handler reads it as any body.
    /// async fn read(body: RequestBody<axum::body::Body>) -> bytes::Bytes {
    ///     body.collect().await.unwrap().to_bytes()
    /// }
    /// # let _ = read;
    /// ```
    pub struct RequestBody<B> {
        #[pin]
        kind: Either<B>,
    }
}

impl<B> RequestBody<B> {
    /// A body read whole by the layer.
    pub(crate) fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Either::whole(data, trailers),
        }
    }

    /// The caller's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Either::Inner { body },
        }
    }
}

delegate_body!(RequestBody);

pin_project! {
    /// The body of a response of [`IdempotencyLayer`](super::IdempotencyLayer):
    /// the inner service's body `B`, untouched, for a response the layer
    /// passes on as it is (a request that passed through, a refusal, a body
    /// too large to store); else a body held whole, bytes and trailers: a
    /// fresh answer the layer read to store it, a replay, or the layer's own
    /// answer. A gRPC answer's `grpc-status` lives in its trailers, and a
    /// replay has them as the first answer had.
    ///
    /// Its data is [`Bytes`] whatever `B`'s is, and its error is `B`'s, so
    /// axum (`IntoResponse`) and tonic's server take it as it is; a whole
    /// body of bytes is made with `From`:
    ///
    /// ```
    /// use http_body::Body;
    /// use idempotent_core::http::ResponseBody;
    ///
    /// let body = ResponseBody::<axum::body::Body>::from(bytes::Bytes::from_static(b"paid"));
    /// assert_eq!(body.size_hint().exact(), Some(4));
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Either<B>,
    }
}

impl<B> ResponseBody<B> {
    /// A body held whole.
    pub(crate) fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Either::whole(data, trailers),
        }
    }

    /// The inner service's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Either::Inner { body },
        }
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(data: Bytes) -> Self {
        Self::whole(data, None)
    }
}

delegate_body!(ResponseBody);

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_whole_body_gives_its_bytes_then_its_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = ResponseBody::<http_body_util::Empty<Bytes>>::whole(
            Bytes::from_static(b"reply"),
            Some(trailers.clone()),
        );
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "reply");
    }

    #[tokio::test]
    async fn an_empty_whole_body_ends_at_once() {
        let body = RequestBody::<http_body_util::Empty<Bytes>>::whole(Bytes::new(), None);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let body = RequestBody::<http_body_util::Empty<Bytes>>::whole(Bytes::new(), None);
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    /// Any body passes through, its data as `Bytes`.
    #[tokio::test]
    async fn an_inner_body_of_any_data_passes_through() {
        let inner = http_body_util::Full::new(std::io::Cursor::new(b"abc".to_vec()));
        let body = RequestBody::inner(inner);
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }
}
