//! Strict request bodies: a size limit (413), valid JSON, no unknown fields, and
//! error messages that name the field at fault.

use axum::body::Body;
use orch_domain::{ErrorCode, OrchError};
use serde::de::DeserializeOwned;

/// Read the body (up to `limit` bytes) and decode it strictly.
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, OrchError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        OrchError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    })?;
    decode(&bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OrchError> {
    if bytes.is_empty() {
        return Err(OrchError::invalid(
            "body",
            "empty; a JSON object is required",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        OrchError::invalid(&field, inner)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_domain::TaskRequest;

    #[test]
    fn names_unknown_and_mistyped_fields() {
        let base = r#""workload":"completion","model_ref":"m","priority":"batch","prompt":"p","max_tokens":1"#;
        let e = decode::<TaskRequest>(format!("{{{base},\"bogus\":1}}").as_bytes()).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = decode::<TaskRequest>(br#"{"workload":"completion","model_ref":"m","priority":"batch","prompt":"p","max_tokens":"x"}"#).unwrap_err();
        assert!(e.message.starts_with("max_tokens"), "{}", e.message);
        let e = decode::<TaskRequest>(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidParams);
    }
}
