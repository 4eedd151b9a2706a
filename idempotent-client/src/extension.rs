//! What travels with a request and its answer through a middleware stack:
//! the intent's name on the way in, the key and the attempts on the way out.

/// Names the intent of a request sent through an
/// [`IdempotencyMiddleware`](crate::IdempotencyMiddleware): put it in the
/// request's extensions (`reqwest_middleware`'s `with_extension`). The
/// middleware takes the intent's key from the journal, or makes one and
/// journals it before the first attempt, as
/// [`RequestBuilder::intent`](crate::RequestBuilder::intent) does.
///
/// ```
/// use idempotent_client::IntentName;
///
/// let name = IntentName::new("order-42");
/// assert_eq!(name.as_str(), "order-42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentName(String);

impl IntentName {
    /// The intent `name` (`order-42`).
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How an answer came through an
/// [`IdempotencyMiddleware`](crate::IdempotencyMiddleware): the key every
/// attempt carried and how many attempts it took. The middleware puts it in
/// the answer's extensions (`response.extensions().get::<Delivery>()`), and
/// in the request's extensions too, where a caller of
/// `execute_with_extensions` finds it after an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The idempotency key every attempt carried, if any.
    pub key: Option<String>,
    /// Attempts made, the first included.
    pub attempts: u32,
}
