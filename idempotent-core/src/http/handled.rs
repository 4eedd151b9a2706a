//! The mark of a handler's own answer, for the statuses a framework also
//! answers when it refuses a request.

/// Marks a response as the handler's own answer, for the statuses that a
/// framework also answers when it refuses a request before any handler runs
/// (400, 413, 415 and 422 by default: a wrong `Content-Type`, JSON that does
/// not parse or does not fit the handler's type, a body over axum's limit).
///
/// The layer cannot tell such a refusal from a handler's own answer by its
/// status, and they must be kept apart: a refused request never started, so
/// nothing is stored and the corrected retry with the same key runs
/// (Stripe's rule), while an answer the handler gave (a business `422`,
/// say) is stored and replayed like any other. So a response with one of
/// these statuses is stored only when it carries this mark, in its
/// extensions; other statuses need none. With axum (and the `axum`
/// feature), put it in the answer:
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use idempotent_core::http::Handled;
///
/// # #[cfg(feature = "axum")]
/// async fn transfer() -> impl IntoResponse {
///     // Stored: a retry with the same key gets this answer back.
///     (StatusCode::UNPROCESSABLE_ENTITY, Handled, "insufficient funds")
/// }
/// ```
///
/// Elsewhere, insert it: `response.extensions_mut().insert(Handled)`. The
/// statuses are [`IdempotencyLayerBuilder::rejection_status`](super::IdempotencyLayerBuilder::rejection_status)'s to change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handled;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponseParts for Handled {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        mut parts: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}
