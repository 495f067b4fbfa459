//! The one place where an error becomes an HTTP response: status, `Retry-After`,
//! `X-Backoff-Ms`, and the `ErrorEnvelope` body with the correlation id.

use crate::correlation::CorrelationId;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orch_domain::{ErrorCode, OrchError};

/// An error on its way out, with the request's correlation id.
#[derive(Debug)]
pub struct ApiError {
    /// Boxed: handlers return `Result<_, ApiError>` and the error path is the rare one.
    pub error: Box<OrchError>,
    pub correlation_id: CorrelationId,
    /// A body of the wrong media type: 415 with the error's envelope.
    pub unsupported_media_type: bool,
}

impl ApiError {
    pub fn new(error: OrchError, correlation_id: &CorrelationId) -> Self {
        Self {
            error: Box::new(error),
            correlation_id: correlation_id.clone(),
            unsupported_media_type: false,
        }
    }

    /// 415 `INVALID_PARAMS`: the body is not of a media type the operation takes.
    pub fn media_type(error: OrchError, correlation_id: &CorrelationId) -> Self {
        Self {
            unsupported_media_type: true,
            ..Self::new(error, correlation_id)
        }
    }
}

/// Attach the request's correlation id to a service error: `result.or_api(&cid)?`.
pub trait OrApi<T> {
    fn or_api(self, cid: &CorrelationId) -> Result<T, ApiError>;
}

impl<T> OrApi<T> for Result<T, OrchError> {
    fn or_api(self, cid: &CorrelationId) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::new(e, cid))
    }
}

/// HTTP status of each error code (spec §3).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidParams | ErrorCode::DeadlineUnmet => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::AdmissionReject | ErrorCode::QuotaExceeded | ErrorCode::QueueFullDropLru => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ErrorCode::PoolUnready
        | ErrorCode::PoolUnavailable
        | ErrorCode::Overloaded
        | ErrorCode::ReplicaExhausted => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::DecodeTimeout | ErrorCode::WorkerReset | ErrorCode::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = if self.unsupported_media_type {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else {
            status_of(self.error.code)
        };
        let backoff = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let mut err = *self.error;
        if backoff && err.retry_after_ms.is_none() {
            err.retry_after_ms = Some(1000);
        }
        if status.is_server_error() && err.code == ErrorCode::Internal {
            tracing::error!(correlation_id = %self.correlation_id.0, error = %err.message, "internal error");
        }
        let retry_ms = err.retry_after_ms;
        let body = err.into_envelope(self.correlation_id.0.clone());
        let mut resp = (status, axum::Json(body)).into_response();
        if let (true, Some(ms)) = (backoff, retry_ms) {
            let h = resp.headers_mut();
            let secs = ms.div_ceil(1000).max(1);
            h.insert("retry-after", HeaderValue::from(secs));
            h.insert("x-backoff-ms", HeaderValue::from(ms));
        }
        resp
    }
}
