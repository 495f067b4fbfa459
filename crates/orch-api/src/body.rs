//! Strict request bodies: a size limit (413), valid JSON, no unknown fields, and
//! error messages that name the field at fault.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use orch_domain::{ErrorCode, OrchError};

/// Whether the request says its body is JSON (`application/json` or a `+json` type,
/// parameters such as `charset` allowed).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The error for a body that is not JSON (answered with 415).
pub fn not_json(headers: &HeaderMap) -> OrchError {
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    OrchError::invalid(
        "Content-Type",
        format!("must be application/json, got {got}"),
    )
}
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
    fn accepts_only_json_media_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            m
        };
        assert!(is_json(&h("application/json")));
        assert!(is_json(&h("Application/JSON; charset=utf-8")));
        assert!(is_json(&h("application/merge-patch+json")));
        assert!(!is_json(&h("text/plain")));
        assert!(!is_json(&h("application/x-www-form-urlencoded")));
        assert!(!is_json(&HeaderMap::new()));
        assert!(not_json(&h("text/plain")).message.contains("text/plain"));
    }

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
