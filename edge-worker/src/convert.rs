//! Between Workers' request/response types and the `http` crate's, which the core speaks.

use bytes::Bytes;
use worker::{Headers, Method, Request, Response, Result};

/// The request line and headers as an `http` request with an empty body (classify needs no body).
pub fn head(req: &Request) -> Result<http::Request<Bytes>> {
    let url = req.url()?;
    let mut uri = url.path().to_string();
    if let Some(q) = url.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let mut b = http::Request::builder()
        .method(req.method().as_ref())
        .uri(uri);
    for (k, v) in req.headers().entries() {
        b = b.header(k, v);
    }
    b.body(Bytes::new())
        .map_err(|e| worker::Error::RustError(format!("bad request line: {e}")))
}

/// Whether the method carries a body worth reading.
pub fn has_body(m: &Method) -> bool {
    !matches!(m, Method::Get | Method::Head | Method::Options)
}

/// An `http` response from the core as a Workers response.
pub fn response(r: http::Response<Bytes>) -> Result<Response> {
    let (parts, body) = r.into_parts();
    let headers = headers(&parts.headers)?;
    let out = if body.is_empty() {
        Response::empty()?
    } else {
        Response::from_bytes(body.to_vec())?
    };
    Ok(out.with_status(parts.status.as_u16()).with_headers(headers))
}

/// Copies a header map.
pub fn headers(h: &http::HeaderMap) -> Result<Headers> {
    let out = Headers::new();
    for (k, v) in h {
        if let Ok(v) = v.to_str() {
            out.append(k.as_str(), v)?;
        }
    }
    Ok(out)
}

/// A response with a body and a content type.
pub fn text(status: u16, ctype: &str, body: impl Into<Vec<u8>>) -> Result<Response> {
    let h = Headers::new();
    h.set("content-type", ctype)?;
    // The CORS set the core sends (AtomKV's), for the answers the worker gives itself.
    h.set("access-control-allow-origin", "*")?;
    h.set("access-control-allow-headers", "*")?;
    h.set("access-control-allow-methods", "*")?;
    h.set(
        "access-control-expose-headers",
        "X-Revision, ETag, X-Version",
    )?;
    Ok(Response::from_bytes(body.into())?
        .with_status(status)
        .with_headers(h))
}

/// A response the core built without CORS headers (e.g. `too_large`), with the worker's CORS set.
pub fn with_cors(r: http::Response<Bytes>) -> Result<Response> {
    let ctype = r
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain; charset=utf-8")
        .to_string();
    let status = r.status().as_u16();
    text(status, &ctype, r.into_body().to_vec())
}

/// A problem+json error, as the native server sends on `/_` routes.
pub fn problem(status: u16, code: &str, detail: &str) -> Result<Response> {
    let title = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = serde_json::json!({
        "type": "about:blank", "title": title, "status": status, "code": code, "detail": detail,
    });
    text(status, "application/problem+json", body.to_string())
}

/// A subscription the core refused, answered before any upgrade (as the native server does).
pub fn refused(e: &stateline_core::Error) -> Result<Response> {
    text(
        e.status().as_u16(),
        "text/plain; charset=utf-8",
        format!("{e}\n"),
    )
}
