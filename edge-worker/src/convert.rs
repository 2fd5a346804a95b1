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

/// A response with a body and a content type, with the core's CORS set (the edge serves the
/// default origins: any).
pub fn text(status: u16, ctype: &str, body: impl Into<Vec<u8>>) -> Result<Response> {
    let mut h = http::HeaderMap::new();
    let origins = stateline_core::Config::default().cors_origins;
    stateline_core::web::cors(&origins, &http::HeaderMap::new(), &mut h);
    let h = headers(&h)?;
    h.set("content-type", ctype)?;
    Ok(Response::from_bytes(body.into())?
        .with_status(status)
        .with_headers(h))
}

/// A response the core built without CORS headers, with the core's CORS set.
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

/// A problem document with the edge's own code (the core writes it).
pub fn problem(status: u16, code: &str, detail: &str) -> Result<Response> {
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    with_cors(stateline_core::web::problem_with(status, code, detail))
}

/// A refusal the worker answers itself (before any object has an engine), as the core words
/// it for `req` (a problem document on `/_` routes, ooo's text elsewhere).
pub fn refusal<B>(req: &http::Request<B>, e: &stateline_core::Error) -> Result<Response> {
    let origins = stateline_core::Config::default().cors_origins;
    response(stateline_core::web::refusal(origins.as_slice(), req, e))
}
