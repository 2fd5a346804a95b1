//! # stateline-client
//!
//! A Rust client for Stateline: REST helpers in the spirit of ooo's Go client, a raw
//! [`Client::request`], and live subscriptions and writes over one multiplexed `/_ws` socket.
//!
//! The live half is an adapter around the core's sync state machine ([`stateline_core::sync`]),
//! as the JS client is: a tokio task owns the socket and the timer, reports what happened with
//! `handle_*` and carries out what [`poll_io`](stateline_core::sync::Client::poll_io),
//! [`poll_event`](stateline_core::sync::Client::poll_event) and
//! [`poll_timeout`](stateline_core::sync::Client::poll_timeout) ask. So the reconnect backoff,
//! resuming from each subscription's version, the order of a list, which changes to report and
//! the queue of writes made while offline are the core's, tested there without sockets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), stateline_client::ClientError> {
//! use stateline_client::{Client, Event};
//! use serde_json::json;
//!
//! let c = Client::new("http://127.0.0.1:8800")?;
//! c.set("settings", &json!({"theme": "dark"})).await?;
//! let mut todos = c.subscribe("todos/*")?; // reconnects and resumes from its version
//! c.write(json!({"op": "push", "path": "todos/*", "value": {"t": "milk"}})).await?;
//! while let Some(event) = todos.next().await {
//!     if let Event::Update(u) = event {
//!         println!("{} items, changed: {:?}", u.value.as_array().map_or(0, Vec::len), u.changes);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **Invariant:** no sync decision here. What to send, what a frame means, when to reconnect and
//! what to report belong to the core; this crate moves bytes and hands events to their
//! subscription.

mod live;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub use live::{Event, Subscription, Update};
pub use stateline_core::sync::{Config, Failure, KeyChange, State};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not `http://host:port`.
    #[error("bad base url {0:?}: expected http://host:port")]
    Url(String),
    /// The request failed before a response arrived.
    #[error("http: {0}")]
    Http(String),
    /// The server answered with an error status.
    #[error("status {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// A body was not the JSON expected.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A live operation failed: the server refused it (`status` set), or the sync state machine
    /// did (`status` 0: an invalid path, `connection-lost`, `queue-full`, ...).
    #[error("{} ({}): {}", .0.code, .0.status, .0.detail)]
    Failed(Failure),
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, ClientError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn ok(self) -> Result<Response, ClientError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(ClientError::Status {
                status: self.status.as_u16(),
                body: self.text(),
            })
        }
    }
}

/// A client for one server. Clones share one HTTP connection pool and one live connection.
///
/// The live connection (one `/_ws` socket) opens with the first [`Client::subscribe`] or
/// [`Client::write`] and lives as long as the client, a clone of it or a subscription does.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    live: Arc<live::Live>,
}

impl Client {
    /// A client for `http://host:port` (a trailing `/` is ignored), with the sync state
    /// machine's default [`Config`].
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(ClientError::Url(base));
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        let live = Arc::new(live::Live::new(
            format!("ws://{}/_ws", &base["http://".len()..]),
            Config::default(),
        ));
        Ok(Client { base, http, live })
    }

    /// The same client with another live connection: `config` (backoff, ping, queue bound,
    /// write ids: drawn at random when `write_ids` is `None`, so every write carries an id and
    /// is resent safely after a reconnect) for the sync state machine, `namespace` for an edge worker in namespace mode, which serves one
    /// namespace (first key segment) per `/_ws?ns=<namespace>` socket. Call it before
    /// subscribing: subscriptions already made stay on the connection they were made on.
    pub fn with_live(&self, config: Config, namespace: Option<&str>) -> Client {
        let mut url = self.ws_url("/_ws");
        if let Some(ns) = namespace {
            url.push_str("?ns=");
            url.push_str(ns);
        }
        Client {
            base: self.base.clone(),
            http: self.http.clone(),
            live: Arc::new(live::Live::new(url, config)),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `ws://host:port` + `path` (which starts with `/`).
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", &self.base["http://".len()..])
    }

    /// Any request; `path` includes the query. Error statuses are returned, not raised.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(body.into()))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The meta object of a key (`{created, updated, index, path, data}`), `None` if absent.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, ClientError> {
        let r = self
            .request(
                Method::GET,
                &format!("/{}", stateline_core::key::encode_http_path(key)),
                &[],
                "",
            )
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(r.ok()?.json()?))
    }

    /// The meta objects under a glob, in the server's order (newest first).
    pub async fn list(&self, glob: &str) -> Result<Vec<Value>, ClientError> {
        let r = self
            .request(
                Method::GET,
                &format!("/{}", stateline_core::key::encode_http_path(glob)),
                &[],
                "",
            )
            .await?
            .ok()?;
        Ok(serde_json::from_slice(&r.body)?)
    }

    /// Creates or replaces a key; returns its index (last segment).
    pub async fn set(&self, key: &str, value: &Value) -> Result<String, ClientError> {
        self.post(
            &format!("/{}", stateline_core::key::encode_http_path(key)),
            value,
        )
        .await
    }

    /// Adds a value under `prefix/*` with a new time-ordered key; returns that key's index.
    pub async fn push(&self, glob: &str, value: &Value) -> Result<String, ClientError> {
        self.post(
            &format!("/{}", stateline_core::key::encode_http_path(glob)),
            value,
        )
        .await
    }

    async fn post(&self, path: &str, value: &Value) -> Result<String, ClientError> {
        let body = serde_json::to_vec(value)?;
        let r = self
            .request(
                Method::POST,
                path,
                &[("content-type", "application/json")],
                body,
            )
            .await?
            .ok()?;
        let v = r.json()?;
        Ok(v.get("index")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Deletes a key (or every key matching a glob).
    pub async fn delete(&self, key: &str) -> Result<(), ClientError> {
        self.request(
            Method::DELETE,
            &format!("/{}", stateline_core::key::encode_http_path(key)),
            &[],
            "",
        )
        .await?
        .ok()
        .map(|_| ())
    }

    /// Follows a key, a glob (`todos/*`) or a subtree (`todos/`) over the live connection
    /// (opened now if it is not yet): first its current value, then every change; after a lost
    /// connection it resumes from the version it holds. An invalid path fails at once. Must be
    /// called inside a tokio runtime.
    pub fn subscribe(&self, path: &str) -> Result<Subscription, ClientError> {
        live::subscribe(&self.live, path)
    }

    /// Sends a write over the live connection, a `/_ws` message without `id`
    /// (`{"op":"set","key":..,"value":..}`, `push`, `patch`, `del`, `incr`, `take`, `rename`;
    /// docs/protocol.md), and waits for its reply fields (`key`, `revision`, ...). While the
    /// connection is down the write is queued and sent in order when it is back; the sync state
    /// machine decides what is resent and what fails. Must be called inside a tokio runtime.
    pub async fn write(&self, msg: Value) -> Result<Value, ClientError> {
        live::write(&self.live, msg).await
    }

    /// The live connection's state ([`State::Closed`] until the first subscription or write).
    pub fn state(&self) -> State {
        self.live.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Client::new("http://127.0.0.1:1/").unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:1");
        assert_eq!(c.ws_url("/a/*"), "ws://127.0.0.1:1/a/*");
        assert_eq!(c.live.url(), "ws://127.0.0.1:1/_ws");
        let n = c.with_live(Config::default(), Some("books"));
        assert_eq!(n.live.url(), "ws://127.0.0.1:1/_ws?ns=books");
        assert!(Client::new("ftp://x").is_err());
        assert!(Client::new("http://").is_err());
        assert_eq!(c.state(), State::Closed);
    }
}
