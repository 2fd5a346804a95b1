//! Stateline embedded as a library, the way ooo's `samples/static_routes_filters_audit` uses
//! ooo: static mode, filters that validate and transform, a limit, an audit hook, a custom
//! endpoint with described types, and subscribe hooks.
//!
//! Run: `cargo run -p stateline-server --example embedded` (listens on 127.0.0.1:8800, or the
//! address in `STATELINE_ADDR`), then try
//! `curl -X POST localhost:8800/books/dune -H 'X-Api-Key: letmein' -d '{"title":"Dune"}'` and
//! `curl localhost:8800/?api=endpoints`. `native-server/tests/embedded.rs` drives it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use stateline_core::filter::Limit;
use stateline_server::ext::{Endpoint, MethodSpec};
use stateline_server::{ServeArgs, Server};

/// The server, built on `args` (`ServeArgs::memory()` for tests). `watchers` counts the
/// subscriptions open right now (the subscribe hooks keep it).
pub fn build(
    args: ServeArgs,
    watchers: Arc<AtomicUsize>,
) -> Result<Server, Box<dyn std::error::Error>> {
    let joined = watchers.clone();
    let left = watchers;
    let server = Server::builder()
        .args(args)
        // Only what a filter names can be used at all.
        .static_mode(true)
        .open("books/*")?
        // Every matching filter applies, in order (unlike ooo, where the first match wins).
        .write("books/*", |_key, v: Value| {
            match v.get("title").and_then(Value::as_str) {
                Some(t) if !t.trim().is_empty() => Ok(v),
                _ => Err("a book needs a title".into()),
            }
        })?
        .write("books/*", |_key, mut v: Value| {
            v["shelved"] = json!(true);
            Ok(v)
        })?
        .delete("books/*", |key| {
            if key.ends_with("/classic") {
                Err("classics stay on the shelf".into())
            } else {
                Ok(())
            }
        })?
        .limit(
            "logs/*",
            Limit {
                count: Some(3),
                max_age_ns: None,
            },
        )?
        // Reads are open; writes need the API key (ooo's Audit, as request middleware).
        .audit(|ev| {
            let key_ok = ev
                .headers
                .get("x-api-key")
                .is_some_and(|k| k.as_bytes() == b"letmein");
            if ev.method == Method::GET || ev.method == Method::OPTIONS || key_ok {
                Ok(())
            } else {
                Err("writes need X-Api-Key".into())
            }
        })
        .endpoint(
            Endpoint::new("/shelves/{shelf}", "How many books a shelf holds")
                .var("shelf", "the first segment after books/, e.g. scifi")
                .method(
                    MethodSpec::new(Method::GET)
                        .response(json!({"shelf": "string", "books": "integer"})),
                )
                .handler(|req| async move {
                    let shelf = req.vars.get("shelf").cloned().unwrap_or_default();
                    let books = req
                        .state
                        .list("books/*")
                        .iter()
                        .filter(|(_, v)| v["shelf"].as_str() == Some(shelf.as_str()))
                        .count();
                    let body = json!({"shelf": shelf, "books": books}).to_string();
                    let mut r = http::Response::new(Bytes::from(body));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    r
                }),
        )?
        .on_subscribe(move |pattern, _who| {
            if !pattern.as_str().starts_with("books") {
                return Err(format!("{pattern}: only books can be watched"));
            }
            joined.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .on_unsubscribe(move |_pattern| {
            left.fetch_sub(1, Ordering::SeqCst);
        })
        .build()?;
    Ok(server)
}

#[allow(dead_code)] // The test includes this file for `build` only.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::var("STATELINE_ADDR").unwrap_or_else(|_| "127.0.0.1:8800".into());
    let server = build(ServeArgs::memory(), Arc::default())?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    server
        .serve(listener, stateline_server::shutdown_signal())
        .await?;
    Ok(())
}
