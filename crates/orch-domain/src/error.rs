//! The OrchQueue error taxonomy: stable codes, the domain error every layer returns,
//! and the `ErrorEnvelope` body. The mapping from code to HTTP status lives in
//! `orch-api` (one place), never here.

use crate::policy::PolicyLabel;
use serde::{Deserialize, Serialize};

/// A stable error code (spec §3). The string form is the wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidParams,
    DeadlineUnmet,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The request body did not arrive within the server's body read timeout (408).
    RequestTimeout,
    AdmissionReject,
    QuotaExceeded,
    QueueFullDropLru,
    PoolUnready,
    PoolUnavailable,
    /// The server is at its connection limit (503, before the request is read).
    Overloaded,
    ReplicaExhausted,
    DecodeTimeout,
    WorkerReset,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::DeadlineUnmet => "DEADLINE_UNMET",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::AdmissionReject => "ADMISSION_REJECT",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::QueueFullDropLru => "QUEUE_FULL_DROP_LRU",
            ErrorCode::PoolUnready => "POOL_UNREADY",
            ErrorCode::PoolUnavailable => "POOL_UNAVAILABLE",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::ReplicaExhausted => "REPLICA_EXHAUSTED",
            ErrorCode::DecodeTimeout => "DECODE_TIMEOUT",
            ErrorCode::WorkerReset => "WORKER_RESET",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn default_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::AdmissionReject
                | ErrorCode::QuotaExceeded
                | ErrorCode::QueueFullDropLru
                | ErrorCode::PoolUnready
                | ErrorCode::PoolUnavailable
                | ErrorCode::Overloaded
                | ErrorCode::ReplicaExhausted
                | ErrorCode::DecodeTimeout
                | ErrorCode::WorkerReset
        )
    }
}

/// The error every layer returns: a code plus the context the envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct OrchError {
    pub code: ErrorCode,
    pub message: String,
    pub retriable: bool,
    pub retry_after_ms: Option<u64>,
    pub policy_label: Option<PolicyLabel>,
    pub engine: Option<String>,
    pub pool_id: Option<String>,
}

impl OrchError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retriable: code.default_retriable(),
            retry_after_ms: None,
            policy_label: None,
            engine: None,
            pool_id: None,
        }
    }

    /// `INVALID_PARAMS` naming the field at fault: "`field`: reason".
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidParams, format!("{field}: {reason}"))
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} {id} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn with_policy(mut self, label: PolicyLabel) -> Self {
        self.policy_label = Some(label);
        self
    }

    pub fn with_engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    pub fn with_pool(mut self, pool_id: impl Into<String>) -> Self {
        self.pool_id = Some(pool_id.into());
        self
    }

    pub fn into_envelope(self, correlation_id: impl Into<String>) -> ErrorEnvelope {
        ErrorEnvelope {
            code: self.code,
            message: self.message,
            retriable: self.retriable,
            retry_after_ms: self.retry_after_ms,
            policy_label: self.policy_label,
            engine: self.engine,
            pool_id: self.pool_id,
            correlation_id: correlation_id.into(),
        }
    }
}

/// The body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorEnvelope {
    pub code: ErrorCode,
    pub message: String,
    pub retriable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_label: Option<PolicyLabel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    pub correlation_id: String,
}
