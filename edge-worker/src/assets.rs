//! The client script and the UI, embedded in the worker bundle by `stateline-assets` exactly as
//! in the native binary.

use worker::{Response, Result};

use crate::convert;

/// Serves `/`, `/_client.js` and `/_ui/*` (the router sends only those here).
pub fn serve(method: &worker::Method, path: &str, headers: &http::HeaderMap) -> Result<Response> {
    let head = *method == worker::Method::Head;
    // The runtime compresses responses for what the client really accepts (Cloudflare rewrites
    // the request's Accept-Encoding), so ask for the plain bytes and let it.
    let mut plain = headers.clone();
    plain.remove(http::header::ACCEPT_ENCODING);
    match stateline_assets::serve(path, head, &plain) {
        Some(r) => {
            // The CORS set every answer carries, as the core decides it.
            let mut r = r;
            let origins = stateline_core::Config::default().cors_origins;
            stateline_core::web::cors(&origins, headers, r.headers_mut());
            convert::response(r)
        }
        None => convert::problem(404, "no-route", "no such file"),
    }
}
