//! The client script and the UI, embedded in the worker bundle by `stateline-assets` exactly as
//! in the native binary.

use worker::{Response, Result};

use crate::convert;

/// Serves `/`, `/_client.js` and `/_ui/*` (the router sends only those here).
pub fn serve(method: &worker::Method, path: &str, headers: &http::HeaderMap) -> Result<Response> {
    let head = *method == worker::Method::Head;
    match stateline_assets::serve(path, head, headers) {
        Some(r) => {
            let zipped = r.headers().contains_key(http::header::CONTENT_ENCODING);
            let mut r = convert::response(r)?;
            if zipped {
                // The body is gzip already: the runtime must send it as is, not compress it again.
                r = r.with_encode_body(worker::EncodeBody::Manual);
            }
            // The CORS set every answer carries (the core adds it to its own).
            for (k, v) in [
                ("access-control-allow-origin", "*"),
                (
                    "access-control-expose-headers",
                    "X-Revision, ETag, X-Version",
                ),
            ] {
                r.headers_mut().set(k, v)?;
            }
            Ok(r)
        }
        None => convert::problem(404, "no-route", "no such file"),
    }
}
