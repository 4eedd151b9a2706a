//! The layer and its builder.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};

use super::config::{Config, ScopeFn, StatusFn};
use super::header::IDEMPOTENCY_KEY;
use super::service::IdempotencyService;
use super::tracker::HandlerTracker;
use crate::{Idempotency, Operation};

/// The request body limit, by default: 2 MiB (axum's own default).
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The default bound on a handler's response body that the layer reads and
/// stores: 8 MiB.
pub const DEFAULT_RESPONSE_LIMIT: usize = 8 * 1024 * 1024;

/// What a request gets when the same key is being processed right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InProgress {
    /// `409 Conflict` at once, with `Retry-After` (the default).
    Reject,
    /// Wait up to this long for the first request to finish, then replay its
    /// response (or run, if it failed); `409` if it is still running then.
    Wait(Duration),
}

/// A [`tower::Layer`] that makes the unsafe methods of a service idempotent;
/// see the [module documentation](crate::http).
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("methods", &self.config.methods)
            .field("header", &self.config.header)
            .field("required", &self.config.required)
            .field("body_limit", &self.config.body_limit)
            .field("response_limit", &self.config.response_limit)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// The tracker of this layer's running handlers, to wait at shutdown
    /// for those whose callers left (see [`HandlerTracker`]). Clones of
    /// the layer share it.
    pub fn handler_tracker(&self) -> HandlerTracker {
        self.config.tracker.clone()
    }

    /// Starts configuring a layer on `runtime` (its store, namespace, TTL and
    /// lease are the defaults).
    ///
    /// The layer is built once its scope is chosen: the caller's identity
    /// ([`scope`](IdempotencyLayerBuilder::scope)), or none, for a service
    /// with a single tenant ([`single_tenant`](IdempotencyLayerBuilder::single_tenant)).
    /// The IETF draft asks that a key be combined with the client's
    /// identity: without a scope, two callers who send the same key share
    /// one record, and the second gets the first one's response.
    pub fn builder(runtime: Idempotency) -> IdempotencyLayerBuilder<ScopeUnchosen> {
        IdempotencyLayerBuilder {
            settings: Settings {
                runtime,
                name: "http",
                ttl: None,
                lease: None,
                in_progress: InProgress::Reject,
                methods: vec![Method::POST, Method::PATCH],
                header: HeaderName::from_static(IDEMPOTENCY_KEY),
                required: true,
                body_limit: DEFAULT_BODY_LIMIT,
                response_limit: DEFAULT_RESPONSE_LIMIT,
                storable: Arc::new(default_storable),
                rejection: Arc::new(default_rejection),
                scope: None,
            },
            chosen: PhantomData,
        }
    }
}

impl<S> tower::Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, Arc::clone(&self.config))
    }
}

/// Statuses 200 to 499, except the "try again" ones: 408, 409, 425, 429.
fn default_storable(status: StatusCode) -> bool {
    (200..500).contains(&status.as_u16()) && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

/// What axum's extractors answer when they refuse a request: 400, 413, 415, 422.
fn default_rejection(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 415 | 422)
}

/// A builder whose scope is not chosen yet: it cannot build a layer. See
/// [`IdempotencyLayer::builder`].
#[derive(Debug)]
pub struct ScopeUnchosen;

/// A builder whose scope is chosen: a scope function, or a single tenant.
/// See [`IdempotencyLayer::builder`].
#[derive(Debug)]
pub struct ScopeChosen;

/// Whether a builder's scope is chosen; see [`IdempotencyLayer::builder`].
/// A builder whose scope is not chosen has no `build()`:
///
/// ```compile_fail
/// use idempotent_core::{Idempotency, http::IdempotencyLayer};
/// use idempotent_core::memory::MemoryStore;
///
/// // error: the layer's scope is not chosen
/// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).build();
/// ```
#[diagnostic::on_unimplemented(
    message = "the layer's scope is not chosen",
    label = "choose it before `build()`",
    note = "call `.scope(|request| ...)` with the caller's identity (a tenant, an authenticated principal), or `.single_tenant()` for a service with a single tenant"
)]
pub trait Scope: sealed::Sealed {}

impl Scope for ScopeChosen {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ScopeChosen {}
}

/// Configures an [`IdempotencyLayer`]. `S` says whether its scope is
/// chosen: [`build`](Self::build) needs it to be.
#[must_use]
pub struct IdempotencyLayerBuilder<S = ScopeChosen> {
    settings: Settings,
    chosen: PhantomData<S>,
}

/// What an [`IdempotencyLayerBuilder`] has been told, whatever its scope's state.
struct Settings {
    runtime: Idempotency,
    name: &'static str,
    ttl: Option<Duration>,
    lease: Option<Duration>,
    in_progress: InProgress,
    methods: Vec<Method>,
    header: HeaderName,
    required: bool,
    body_limit: usize,
    response_limit: usize,
    storable: Arc<StatusFn>,
    rejection: Arc<StatusFn>,
    scope: Option<Arc<ScopeFn>>,
}

impl<S> fmt::Debug for IdempotencyLayerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("name", &self.settings.name)
            .field("methods", &self.settings.methods)
            .field("header", &self.settings.header)
            .finish_non_exhaustive()
    }
}

impl<S> IdempotencyLayerBuilder<S> {
    /// The methods guarded (default POST and PATCH); others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = methods.into_iter().collect();
        self
    }

    /// The header carrying the key (default `Idempotency-Key`).
    pub fn header(mut self, header: HeaderName) -> Self {
        self.settings.header = header;
        self
    }

    /// Whether a guarded request without a key is refused with `400`
    /// (default `true`); when `false` it passes through unguarded.
    pub fn required(mut self, required: bool) -> Self {
        self.settings.required = required;
        self
    }

    /// How long a stored response is kept (default: the runtime's TTL; at
    /// most [`MAX_DURATION`](crate::record::MAX_DURATION)).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = Some(ttl);
        self
    }

    /// The lease of a request being processed (default: the runtime's; at
    /// least [`MIN_LEASE`](crate::MIN_LEASE)).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = Some(lease);
        self
    }

    /// What a duplicate of a request still running gets (default
    /// [`InProgress::Reject`]).
    pub fn in_progress(mut self, in_progress: InProgress) -> Self {
        self.settings.in_progress = in_progress;
        self
    }

    /// The largest request body accepted, in bytes (default
    /// [`DEFAULT_BODY_LIMIT`]); larger ones get `413`.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.settings.body_limit = bytes;
        self
    }

    /// The largest response body stored, in bytes (default
    /// [`DEFAULT_RESPONSE_LIMIT`]). The layer reads a response whole before
    /// storing it, so this bounds the memory a guarded request can take.
    /// The handler of a larger response ran, so a retry must not run it
    /// again, but its response cannot be replayed: when its status is one
    /// the layer stores (see [`store_status`](Self::store_status)), a `500`
    /// problem document saying so is stored in its place, and every retry
    /// gets that. Otherwise (a 5xx, a 429, ...) nothing is stored, as for a
    /// small answer of that status.
    /// - A response that says its size up front (`Content-Length`, or a body
    ///   whose size is known) is passed to the client untouched the first
    ///   time.
    /// - One that goes over the limit while it is read (a stream) gets the
    ///   problem the first time too, since its start has been consumed.
    ///
    /// Guard only routes whose answers are small enough to store.
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.settings.response_limit = bytes;
        self
    }

    /// Which response statuses are stored and replayed (default: 200 to 499
    /// except 408, 409, 425 and 429). A handler's 5xx is never stored,
    /// whatever this says: the key is released and a retry runs the handler
    /// again.
    pub fn store_status(
        mut self,
        storable: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings.storable = Arc::new(storable);
        self
    }

    /// Which statuses a framework answers when it refuses a request before
    /// any handler runs (default 400, 413, 415 and 422, what axum's
    /// extractors answer). A response with one of them is stored only when
    /// the handler marks it [`Handled`](super::Handled); unmarked, the key is released and
    /// the corrected retry runs. `|_| false` stores every status the
    /// [`store_status`](Self::store_status) policy allows, marked or not.
    ///
    /// ```
    /// use idempotent_core::{Idempotency, http::IdempotencyLayer};
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// // A framework that answers refusals with 400 only.
    /// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
    ///     .rejection_status(|status| status == 400)
    ///     .single_tenant()
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn rejection_status(
        mut self,
        rejection: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings.rejection = Arc::new(rejection);
        self
    }

    /// The scope of a request: the caller's identity (a tenant, an
    /// authenticated principal), from its head; `None` is the empty scope,
    /// shared by every request that has none. The same key in two scopes is
    /// two keys, so one caller never gets another's response.
    ///
    /// ```
    /// use idempotent_core::{Idempotency, http::IdempotencyLayer};
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// #[derive(Clone)]
    /// struct Account(String); // put in the request by the authentication middleware
    ///
    /// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
    ///     .scope(|request| request.extensions.get::<Account>().map(|a| a.0.clone()))
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn scope(
        self,
        scope: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> IdempotencyLayerBuilder<ScopeChosen> {
        let mut settings = self.settings;
        settings.scope = Some(Arc::new(scope));
        IdempotencyLayerBuilder {
            settings,
            chosen: PhantomData,
        }
    }

    /// No scope: every caller shares one space of keys. Only for a service
    /// with a single tenant, or whose callers are all trusted to pick keys
    /// that never collide (UUIDs); otherwise use [`scope`](Self::scope).
    ///
    /// ```
    /// use idempotent_core::{Idempotency, http::IdempotencyLayer};
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
    ///     .single_tenant()
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn single_tenant(self) -> IdempotencyLayerBuilder<ScopeChosen> {
        let mut settings = self.settings;
        settings.scope = None;
        IdempotencyLayerBuilder {
            settings,
            chosen: PhantomData,
        }
    }

    /// The operation name used in metrics and traces (default `http`). It is
    /// not part of the storage key, which holds the runtime's namespace, the
    /// scope, the method and path, and the key: two layers that share a
    /// store and serve the same method and path (two versions of one
    /// service, say) share their records unless their runtimes'
    /// [namespaces](crate::IdempotencyBuilder::namespace) differ.
    pub fn name(mut self, name: &'static str) -> Self {
        self.settings.name = name;
        self
    }

    /// Builds the layer, once its scope is chosen.
    pub fn build(self) -> IdempotencyLayer
    where
        S: Scope,
    {
        let settings = self.settings;
        let mut operation = Operation::new(settings.name);
        if let Some(ttl) = settings.ttl {
            operation = operation.ttl(ttl);
        }
        if let Some(lease) = settings.lease {
            operation = operation.lease(lease);
        }
        if let InProgress::Wait(wait) = settings.in_progress {
            operation = operation.wait(wait);
        }
        IdempotencyLayer {
            config: Arc::new(Config {
                runtime: settings.runtime,
                operation,
                methods: settings.methods,
                header: settings.header,
                required: settings.required,
                body_limit: settings.body_limit,
                response_limit: settings.response_limit,
                storable: settings.storable,
                rejection: settings.rejection,
                scope: settings.scope,
                tracker: HandlerTracker::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rejection_statuses_are_what_axum_extractors_answer() {
        for rejection in [400, 413, 415, 422] {
            assert!(default_rejection(StatusCode::from_u16(rejection).unwrap()));
        }
        for other in [200, 201, 401, 402, 403, 404, 409, 500] {
            assert!(!default_rejection(StatusCode::from_u16(other).unwrap()));
        }
    }

    #[test]
    fn the_default_policy_stores_final_answers_only() {
        for stored in [200, 201, 204, 301, 400, 404, 422] {
            assert!(
                default_storable(StatusCode::from_u16(stored).unwrap()),
                "{stored}"
            );
        }
        for not_stored in [100, 408, 409, 425, 429, 500, 502, 503] {
            assert!(
                !default_storable(StatusCode::from_u16(not_stored).unwrap()),
                "{not_stored}"
            );
        }
    }
}
