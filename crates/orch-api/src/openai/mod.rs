//! The OpenAI-compatible door: `POST /v1/chat/completions`, `POST /v1/completions`
//! and `GET /v1/models`, onto the same admission path, queue and scheduler as
//! OrchQueue v1. The tenant comes from the API key (`Authorization: Bearer`), the
//! priority from `X-Orch-Priority`. Errors use OpenAI's shape ([`error`]); requests map
//! field by field ([`request`]), refusing what is not served; [`handlers`] relay the
//! task's frames as OpenAI chunks.

pub mod error;
pub mod handlers;
pub mod request;

/// Paths of the OpenAI door (their errors use OpenAI's shape).
pub fn is_openai_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions" | "/v1/completions" | "/v1/models"
    )
}
