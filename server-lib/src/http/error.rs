//! The one error type of the HTTP layer and the one path to it: every lower layer's error
//! converts with `From` (a refusal keeps its code and message, a busy store is a 503, a backing
//! service's failure a logged 500), so handlers use `?` and never build an error response by
//! hand. Every error body follows the protocol's shape:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use trailmark_core::protocol::ErrorResponse;

use crate::clickcache::CacheError;
use crate::domain::error::{Refusal, RefusalKind};
use crate::service::ServiceError;
use crate::service::limits::RateLimited;
use crate::storage::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// The server's clock (Unix ms), sent as `server_time` in the body (authentication
    /// failures: an SDK with a wrong clock learns the offset from it).
    pub server_time: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None, server_time: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    /// With the server's clock in the body.
    pub fn with_server_time(self, now_ms: i64) -> Self {
        ApiError { server_time: Some(now_ms), ..self }
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn rate_limited(retry_after: u64, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }
    pub fn unavailable(retry_after: u64, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
    /// A server-side failure: the details go to the log, the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        ApiError {
            retry_after: Some(5),
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; retry later")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = ErrorResponse::new(self.code, self.message);
        error.error.server_time = self.server_time;
        let body = serde_json::to_vec(&error).unwrap_or_default();
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r.kind {
            RefusalKind::Invalid => StatusCode::BAD_REQUEST,
            RefusalKind::Forbidden => StatusCode::FORBIDDEN,
            RefusalKind::NotFound => StatusCode::NOT_FOUND,
            RefusalKind::Conflict => StatusCode::CONFLICT,
            RefusalKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RefusalKind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        ApiError::new(status, r.code, r.message)
    }
}

impl From<RateLimited> for ApiError {
    fn from(r: RateLimited) -> Self {
        ApiError::rate_limited(r.retry_after, r.message)
    }
}

/// A store that is behind asks the client to retry (503); any other failure is ours (500,
/// logged, generic message).
impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Busy => ApiError::unavailable(1, "the server is busy; retry shortly"),
            other => ApiError::internal(other),
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        tracing::warn!(error = %e, "click cache error");
        ApiError::unavailable(1, "the click cache is unavailable; retry shortly")
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Refused(r) => r.into(),
            ServiceError::RateLimited(r) => r.into(),
            ServiceError::Storage(s) => s.into(),
            ServiceError::Cache(c) => c.into(),
            ServiceError::Unavailable(why) => ApiError::unavailable(1, why),
            ServiceError::Internal(why) => ApiError::internal(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lower_error_has_one_answer() {
        let cases: Vec<(ApiError, StatusCode, &str, Option<u64>)> = vec![
            (Refusal::invalid("invalid_field", "x").into(), StatusCode::BAD_REQUEST, "invalid_field", None),
            (Refusal::not_found("not_found", "x").into(), StatusCode::NOT_FOUND, "not_found", None),
            (Refusal::conflict("currency_mismatch", "x").into(), StatusCode::CONFLICT, "currency_mismatch", None),
            (Refusal::too_large("x").into(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            (StorageError::Busy.into(), StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(1)),
            (StorageError::Backend("disk".into()).into(), StatusCode::INTERNAL_SERVER_ERROR, "internal", Some(5)),
            (CacheError::Unavailable("down".into()).into(), StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(1)),
            (
                ServiceError::RateLimited(RateLimited { retry_after: 3, message: "slow down" }).into(),
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(3),
            ),
            (
                ServiceError::Unavailable("loading".into()).into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(1),
            ),
            (ServiceError::Internal("bug".into()).into(), StatusCode::INTERNAL_SERVER_ERROR, "internal", Some(5)),
            (
                ServiceError::Refused(Refusal::invalid("invalid_body", "x")).into(),
                StatusCode::BAD_REQUEST,
                "invalid_body",
                None,
            ),
        ];
        for (e, status, code, retry_after) in cases {
            assert_eq!((e.status, e.code, e.retry_after), (status, code, retry_after), "{e:?}");
        }
        // A server-side failure's detail stays in the log, never in the answer.
        let e: ApiError = StorageError::Backend("/var/lib/secret.db is locked".into()).into();
        assert!(!e.message.contains("secret"), "{e:?}");
        let response = ApiError::from(StorageError::Busy).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
