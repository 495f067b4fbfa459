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

/// How much of a body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted (413 above).
    pub max_bytes: usize,
    /// The whole body must arrive within this (408 after).
    pub read_timeout: std::time::Duration,
}

impl BodyLimits {
    /// The same timeout with a smaller size limit (small control-plane bodies).
    pub fn capped(self, max_bytes: usize) -> Self {
        Self {
            max_bytes: self.max_bytes.min(max_bytes),
            ..self
        }
    }
}

/// Read the body within `limits` and decode it strictly. Each way reading can fail
/// has its own answer: over the size limit 413, too slow 408, a body the connection
/// could not deliver (cut short, malformed chunking) 400.
pub async fn read_json<T: DeserializeOwned>(
    body: Body,
    limits: BodyLimits,
) -> Result<T, OrchError> {
    let max = limits.max_bytes;
    let too_large = || {
        OrchError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {max} bytes"),
        )
    };
    // an announced length over the limit is refused before anything is read
    if axum::body::HttpBody::size_hint(&body).lower() > max as u64 {
        return Err(too_large());
    }
    let bytes =
        match tokio::time::timeout(limits.read_timeout, axum::body::to_bytes(body, max)).await {
            Err(_) => {
                return Err(OrchError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "request body not received within {} ms",
                        limits.read_timeout.as_millis()
                    ),
                ))
            }
            Ok(Err(e)) if over_limit(&e) => return Err(too_large()),
            Ok(Err(e)) => {
                return Err(OrchError::invalid(
                    "body",
                    format!("could not be read: {e}"),
                ))
            }
            Ok(Ok(b)) => b,
        };
    decode(&bytes)
}

/// Whether reading stopped at the size limit (rather than failing on the wire).
fn over_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OrchError> {
    if bytes.is_empty() {
        return Err(OrchError::invalid(
            "body",
            "empty; a JSON object is required",
        ));
    }
    // the common case reads without tracking the path (which allocates per field);
    // a refusal reads again to name the field it failed at
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        OrchError::invalid(&field, inner)
    })?;
    // one JSON value and nothing after it (whitespace aside)
    de.end().map_err(|e| OrchError::invalid("body", e))?;
    Ok(v)
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

    /// One JSON value per body: a valid task followed by anything but whitespace is
    /// refused (it was accepted before); trailing whitespace is not.
    #[test]
    fn refuses_anything_after_the_body() {
        let task = r#"{"workload":"completion","model_ref":"m","priority":"batch","prompt":"p","max_tokens":1}"#;
        assert!(decode::<TaskRequest>(format!("{task} \n").as_bytes()).is_ok());
        for tail in [" x", "{}", r#"{"a":1}"#] {
            let e = decode::<TaskRequest>(format!("{task}{tail}").as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParams, "{tail}");
            assert!(e.message.contains("trailing"), "{}", e.message);
        }
    }
}
