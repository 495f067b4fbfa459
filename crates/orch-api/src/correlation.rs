//! `X-Correlation-Id`: echoed when the request carries a valid one, generated
//! otherwise, and set on every response (including errors and SSE). The router's
//! outermost layer runs the access log inside [`around`], in the same layer.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;

pub const HEADER: &str = "x-correlation-id";
pub const MAX_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// Accept 1..=128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

tokio::task_local! {
    /// The correlation id of the request being served on this task (for code that
    /// has no request at hand, such as the panic handler).
    static CURRENT: CorrelationId;
}

/// The correlation id of the request this task serves, if any.
pub fn current() -> Option<CorrelationId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Give `req` its correlation id (in its extensions and as this task's current one),
/// serve it with `inner`, and set the id on the response.
pub async fn around<F>(mut req: Request, inner: impl FnOnce(Request) -> F) -> Response
where
    F: std::future::Future<Output = Response>,
{
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_valid(s))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let mut resp = CURRENT.scope(CorrelationId(id.clone()), inner(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A panicking handler answers 500 INTERNAL whose envelope carries the request's
    /// correlation id, the same as its header.
    #[tokio::test]
    async fn a_panic_keeps_the_requests_correlation_id() {
        let app = axum::Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("boom");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(axum::middleware::from_fn(
                |req: axum::extract::Request, next: axum::middleware::Next| {
                    crate::caught(next.run(req))
                },
            ))
            .layer(axum::middleware::from_fn(crate::edge));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /boom HTTP/1.1\r\nhost: x\r\nx-correlation-id: trace-42\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 500"), "{out}");
        assert!(out.contains("\"code\":\"INTERNAL\""), "{out}");
        assert!(out.contains("\"correlation_id\":\"trace-42\""), "{out}");
    }

    #[test]
    fn validates() {
        assert!(super::is_valid("abc-123_x.y:z"));
        assert!(!super::is_valid(""));
        assert!(!super::is_valid("has space"));
        assert!(!super::is_valid(&"a".repeat(129)));
    }
}
