//! What a built layer and its services share: the settings they act on.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, StatusCode};

use super::grpc::{self, Protocol};
use super::handled::Handled;
use super::tracker::HandlerTracker;
use crate::{Idempotency, Operation};

pub(super) type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;
pub(super) type StatusFn = dyn Fn(StatusCode) -> bool + Send + Sync;

pub(crate) struct Config {
    pub(crate) runtime: Idempotency,
    pub(crate) operation: Operation,
    pub(crate) methods: Vec<Method>,
    pub(crate) header: HeaderName,
    pub(crate) required: bool,
    pub(crate) body_limit: usize,
    pub(crate) response_limit: usize,
    pub(crate) storable: Arc<StatusFn>,
    pub(crate) rejection: Arc<StatusFn>,
    pub(crate) scope: Option<Arc<ScopeFn>>,
    pub(crate) tracker: HandlerTracker,
}

impl Config {
    /// Whether an answer with `status` is stored: never a 5xx, else as the
    /// policy says.
    pub(crate) fn stores(&self, status: StatusCode) -> bool {
        !status.is_server_error() && (self.storable)(status)
    }

    /// Whether an answer is stored, from its head and, once its body is
    /// read, its `trailers` (`None` before): for a gRPC caller, by the
    /// answer's gRPC status (see [`grpc::stored`]; before its trailers are
    /// read, an answer whose status is in them counts as the handler's
    /// answer, and once they are, an answer with no status at all is not
    /// stored: its caller sees an error a retry may not repeat), else by its
    /// HTTP status ([`stores`](Self::stores)).
    pub(crate) fn stores_answer(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        trailers: Option<&HeaderMap>,
        protocol: Protocol,
    ) -> bool {
        match protocol {
            Protocol::Grpc if status == StatusCode::OK => match grpc::status(headers, trailers) {
                Some(code) => grpc::stored(code),
                None => trailers.is_none() && self.stores(status),
            },
            _ => self.stores(status),
        }
    }

    /// Whether a response may be the framework's refusal of a request
    /// before any handler ran: a rejection status without the [`Handled`]
    /// mark.
    pub(crate) fn refused<B>(&self, response: &http::Response<B>) -> bool {
        (self.rejection)(response.status()) && response.extensions().get::<Handled>().is_none()
    }
}
