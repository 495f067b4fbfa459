//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with
//! the same HTTP status, `Retry-After` and `X-Backoff-Ms` as OrchQueue errors, so the
//! official SDKs raise their usual exceptions (`RateLimitError` on 429,
//! `AuthenticationError` on 401, `BadRequestError` on 400, …).

use crate::error::status_of;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orch_domain::{ErrorCode, OrchError};
use serde_json::json;

/// An error on its way out of the OpenAI door.
#[derive(Debug)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: String,
    pub retry_after_ms: Option<u64>,
}

impl OpenAiError {
    /// 400 `invalid_request_error` naming the parameter at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            code: "invalid_params".into(),
            retry_after_ms: None,
        }
    }

    /// 400 for a parameter this server does not support (never silently ignored).
    pub fn unsupported(param: &str, why: &str) -> Self {
        Self {
            code: "unsupported_parameter".into(),
            ..Self::invalid(param, format!("'{param}' is not supported here: {why}"))
        }
    }

    pub fn status_code(&self) -> u16 {
        self.status.as_u16()
    }
}

impl From<OrchError> for OpenAiError {
    fn from(e: OrchError) -> Self {
        let status = status_of(e.code);
        // OrchQueue's "field: reason" messages name the parameter
        let param = (e.code == ErrorCode::InvalidParams)
            .then(|| e.message.split_once(':').map(|(f, _)| f.trim().to_string()))
            .flatten()
            .filter(|f| !f.contains(' '));
        let backoff = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        Self {
            status,
            message: e.message,
            param,
            code: match e.policy_label {
                Some(p) => p.as_str().replace('-', "_"),
                None => e.code.as_str().to_ascii_lowercase(),
            },
            retry_after_ms: if backoff {
                Some(e.retry_after_ms.unwrap_or(1000))
            } else {
                None
            },
        }
    }
}

/// OpenAI's `type` for a status.
fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

/// The `data:` payload of an error inside a stream.
pub fn stream_error_json(e: &OpenAiError) -> serde_json::Value {
    json!({"error": {"message": e.message, "type": kind(e.status), "param": e.param, "code": e.code}})
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = %self.code, error = %self.message,
                "openai door error");
        }
        let body = stream_error_json(&self);
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            let h = resp.headers_mut();
            h.insert("retry-after", HeaderValue::from(ms.div_ceil(1000).max(1)));
            h.insert("x-backoff-ms", HeaderValue::from(ms));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_domain::PolicyLabel;

    #[test]
    fn maps_orchqueue_errors() {
        let e: OpenAiError = OrchError::invalid("max_tokens", "too big").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e: OpenAiError = OrchError::new(ErrorCode::QuotaExceeded, "over")
            .with_policy(PolicyLabel::QuotaTokensPerMinute)
            .with_retry_after_ms(2500)
            .into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "quota_tokens_per_minute");
        assert_eq!(e.retry_after_ms, Some(2500));
        assert_eq!(kind(e.status), "rate_limit_error");
    }
}
