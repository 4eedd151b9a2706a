//! What a built layer and its services share: the settings they act on.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};

use super::handled::Handled;
use super::handlers::Handlers;
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
    pub(crate) handlers: Handlers,
}

impl Config {
    /// Whether an answer with `status` is stored: never a 5xx, else as the
    /// policy says.
    pub(crate) fn stores(&self, status: http::StatusCode) -> bool {
        !status.is_server_error() && (self.storable)(status)
    }

    /// Whether a response may be the framework's refusal of a request
    /// before any handler ran: a rejection status without the [`Handled`]
    /// mark.
    pub(crate) fn refused<B>(&self, response: &http::Response<B>) -> bool {
        (self.rejection)(response.status()) && response.extensions().get::<Handled>().is_none()
    }
}
