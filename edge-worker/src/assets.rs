//! `GET /`: the hosted client script (non-HTML `Accept`) and the UI (browsers), embedded in the
//! worker bundle as they are in the native binary.

use worker::{Response, Result};

use crate::convert;

const PLACEHOLDER_HTML: &str = "<!doctype html><title>Stateline</title><h1>Stateline (edge) is running</h1>";

/// Serves `/` by what the client accepts.
pub fn root(headers: &http::HeaderMap) -> Result<Response> {
    let html = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if html {
        convert::text(200, "text/html; charset=utf-8", PLACEHOLDER_HTML)
    } else {
        convert::problem(503, "client-not-built", "the client script is not in this bundle")
    }
}
