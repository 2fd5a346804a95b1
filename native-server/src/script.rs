//! The browser client's single-file script, embedded at build time (see `build.rs`): served at
//! `GET /_client.js` and at `GET /` when the request does not ask for HTML (AtomKV hosts its
//! library at `/`). Without a built script both answer 503 saying how to build it.

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/client_script.rs"));
}

/// Whether this binary carries the client script.
pub fn is_built() -> bool {
    embedded::SCRIPT.is_some()
}

/// The script (or 503), with an ETag; `If-None-Match` gets 304. CORS is added by the caller.
pub fn response(req: &HeaderMap) -> Response {
    let Some(script) = embedded::SCRIPT else {
        let mut r = Response::new(Body::from(
            "client script not built: run npm run build:client (then rebuild the server)\n",
        ));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    };
    let etag = HeaderValue::from_static(embedded::ETAG);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == embedded::ETAG || t.trim() == "*")
        });
    let mut r = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::from(script))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::ETAG, etag);
    // Revalidate every time (a 304 costs one round trip): the stable URL must never serve a
    // stale client after the server is upgraded.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, no-cache"),
    );
    r
}
