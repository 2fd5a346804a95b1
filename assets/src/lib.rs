//! The files Stateline serves itself, the same from the native server and the edge worker: the
//! hosted client script (`/_client.js`, and `/` for anything but a browser page, as AtomKV hosts
//! its library) and the web UI (`/` for browsers, `/_ui/*`).
//!
//! Owns embedding (at build time, see `build.rs`), content types, entity tags, gzip and caching
//! headers. It knows no server: [`serve`] is a pure function from the request line and headers
//! to a response, and the adapter adds CORS.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

/// One embedded file.
#[derive(Debug)]
pub struct Embedded {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Where it is built, relative to the workspace root.
    pub source: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes, if it was built when this binary was.
    pub body: Option<&'static [u8]>,
    /// The same bytes gzipped (sent when the client accepts gzip); empty when built without the
    /// `gzip` feature (the edge worker).
    pub gzip: &'static [u8],
    /// Its entity tag (a hash of the bytes).
    pub etag: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The embedded file for a URL path, if there is one (built or not).
pub fn find(path: &str) -> Option<&'static Embedded> {
    FILES.iter().find(|f| f.path == path)
}

/// Whether the file at `path` was built into this binary.
pub fn is_built(path: &str) -> bool {
    find(path).is_some_and(|f| f.body.is_some())
}

fn wants_html(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|e| {
                let mut parts = e.split(';');
                let name = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
                (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
            })
        })
    })
}

/// Serves `GET`/`HEAD` of `path` (`/` included) from the embedded files; `None` when `path` is
/// not one of them. A file that was not built gets 503 with the command that builds it; a
/// matching `If-None-Match` gets 304.
pub fn serve(path: &str, head: bool, req: &HeaderMap) -> Option<Response<Bytes>> {
    let path = match path {
        "/" if wants_html(req) => "/_ui/index.html",
        "/" => "/_client.js",
        p => p,
    };
    let f = find(path)?;
    let Some(body) = f.body else {
        let what = if f.path == "/_client.js" {
            "build:client"
        } else {
            "build:ui"
        };
        let mut r = Response::new(Bytes::from(format!(
            "{} is not built into this server: run `npm run {what}`, then rebuild the server\n",
            f.source
        )));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Some(r);
    };
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == f.etag || t.trim() == "*"));
    // Built without the `gzip` feature there is no copy to send.
    let gzip = !f.gzip.is_empty() && accepts_gzip(req);
    let mut r = if fresh {
        let mut r = Response::new(Bytes::new());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if head {
        Response::new(Bytes::new())
    } else if gzip {
        Response::new(Bytes::from_static(f.gzip))
    } else {
        Response::new(Bytes::from_static(body))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(f.content_type),
    );
    h.insert(header::ETAG, HeaderValue::from_static(f.etag));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzip && !fresh {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    // Revalidate every time (a 304 costs one round trip): a stable URL must never serve a stale
    // client or UI after the server is upgraded.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, no-cache"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn root_serves_the_ui_to_browsers_and_the_script_otherwise() {
        let html = serve("/", false, &headers(&[("accept", "text/html,*/*")])).unwrap();
        let js = serve("/", false, &headers(&[])).unwrap();
        for (r, built, ctype) in [
            (&html, is_built("/_ui/index.html"), "text/html"),
            (&js, is_built("/_client.js"), "text/javascript"),
        ] {
            if built {
                assert_eq!(r.status(), StatusCode::OK);
                assert!(r.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with(ctype));
            } else {
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert!(std::str::from_utf8(r.body())
                    .unwrap()
                    .contains("npm run build:"));
            }
        }
        assert!(serve("/_ui/missing.js", false, &headers(&[])).is_none());
        assert!(serve("/books", false, &headers(&[])).is_none());
    }

    #[test]
    fn etags_gzip_and_head() {
        for f in FILES.iter().filter(|f| f.body.is_some()) {
            let r = serve(f.path, false, &headers(&[("accept-encoding", "br, gzip")])).unwrap();
            if cfg!(feature = "gzip") {
                assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
                assert_eq!(r.body().as_ref(), f.gzip);
            } else {
                // No copies embedded: the plain bytes, never labelled gzip.
                assert!(f.gzip.is_empty());
                assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
                assert_eq!(r.body().as_ref(), f.body.unwrap());
            }
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(f.etag));
            assert_eq!(
                serve(f.path, false, &h).unwrap().status(),
                StatusCode::NOT_MODIFIED
            );
            let plain = serve(f.path, false, &headers(&[("accept-encoding", "gzip;q=0")])).unwrap();
            assert_eq!(plain.body().as_ref(), f.body.unwrap());
            assert!(serve(f.path, true, &HeaderMap::new())
                .unwrap()
                .body()
                .is_empty());
        }
    }
}
