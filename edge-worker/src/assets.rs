//! `GET /`: the hosted client script (non-HTML `Accept`) and the UI (browsers), embedded in the
//! worker bundle as they are in the native binary.

use worker::{Response, Result};

use crate::convert;

const PLACEHOLDER_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stateline</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Stateline is running at the edge</h1>
<p>The web UI is not built yet: it comes with issue 8 (“The web UI: browse, edit and watch the data live”).</p>
</body></html>
"#;

const PLACEHOLDER_JS: &str = r#"/* Stateline: the client script is not built yet (issue 4, the wasm JavaScript client). */
throw new Error("Stateline: client script not built yet (issue 4)");
"#;

/// Serves `/` by what the client accepts.
pub fn root(headers: &http::HeaderMap) -> Result<Response> {
    let html = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if html {
        convert::text(200, "text/html; charset=utf-8", PLACEHOLDER_HTML)
    } else {
        convert::text(200, "application/javascript; charset=utf-8", PLACEHOLDER_JS)
    }
}
