//! The HTTP stack's ceiling for the write benchmark: the same tokio runtime and hyper HTTP/1.1
//! connection setup as `stateline serve`, answering every request with the headers and body a
//! Stateline write returns, but with no router, no lock and no core behind it. What the
//! benchmark measures against this is the most any server on this stack could do on the
//! machine (docs/BENCHMARKS.md, "Why the HTTP target is missed").
//!
//! ```sh
//! cargo build --release -p stateline-server --example http_ceiling
//! STATELINE_BIN=target/release/examples/http_ceiling \
//!   target/release/stateline-bench --quick --systems stateline --only writes --out /tmp/ceiling
//! ```
//! It takes the `serve --addr HOST:PORT` arguments the benchmark passes and ignores the rest.
//! With `CEILING_CORE=1` every request goes through the core's HTTP function on one engine
//! behind a mutex (what the server does, minus its router, access checks and hooks).

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, ETAG};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

// The allocator of the `stateline` binary (native-server/src/main.rs), so that the comparison
// measures what the server adds to the stack and not a difference of allocators.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The core behind one mutex (with `CEILING_CORE=1`), made once at start.
type Core = std::sync::Arc<(
    std::sync::Mutex<stateline_core::Engine>,
    stateline_server::hub::Clocks,
)>;

async fn answer(
    req: Request<Incoming>,
    core: Option<Core>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body, as a write does.
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if let Some(core) = core {
        let (engine, clocks) = &*core;
        let req = Request::from_parts(parts, body);
        let tick = clocks.tick();
        let out = {
            let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
            let out = stateline_core::web::handle(&mut e, tick, &req);
            e.publish(&out.changes);
            out
        };
        return Ok(out.response.map(Full::new));
    }
    let mut r = Response::new(Full::new(Bytes::from_static(br#"{"index":"w1"}"#)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("*"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("*"),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("X-Revision, ETag, X-Version"),
    );
    h.insert("x-revision", HeaderValue::from_static("0"));
    h.insert(ETAG, HeaderValue::from_static("\"18eab3330ad8b778\""));
    Ok(r)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .iter()
        .position(|a| a == "--addr")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8800".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let core: Option<Core> = std::env::var_os("CEILING_CORE").map(|_| {
        let clocks = stateline_server::hub::Clocks::new();
        let e = stateline_core::Engine::new(clocks.tick(), Default::default(), Default::default());
        std::sync::Arc::new((std::sync::Mutex::new(e), clocks))
    });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        // Exits on SIGINT or SIGTERM as the server does (a profiling build writes its profile
        // then), leaving open connections behind.
        let stop = stateline_server::shutdown_signal();
        tokio::pin!(stop);
        loop {
            let (tcp, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = &mut stop => return Ok(()),
            };
            let _ = tcp.set_nodelay(true);
            let core = core.clone();
            tokio::spawn(async move {
                let mut b = http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10));
                let _ = b
                    .serve_connection(
                        TokioIo::new(tcp),
                        service_fn(move |req| answer(req, core.clone())),
                    )
                    .await;
            });
        }
    })
}
