//! A Rust client for Stateline (and ooo): REST helpers and subscriptions that reconnect and
//! resume, like ooo's Go client, plus a raw `request` for tests.
//!
//! Owns only the client side of the wire: building requests, keeping a subscription's cache
//! (snapshot, then RFC 6902 patches), its version, and the reconnect schedule. A subscription
//! reconnects with `?v=<last version>`, so when nothing changed the server sends nothing and the
//! cache is kept.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

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

/// A client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for `http://host:port` (a trailing `/` is ignored).
    pub fn new(base: &str) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(ClientError::Url(base));
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client { base, http })
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
            .request(Method::GET, &format!("/{key}"), &[], "")
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(r.ok()?.json()?))
    }

    /// The meta objects under a glob, newest first.
    pub async fn list(&self, glob: &str) -> Result<Vec<Value>, ClientError> {
        let r = self
            .request(Method::GET, &format!("/{glob}"), &[], "")
            .await?
            .ok()?;
        Ok(serde_json::from_slice(&r.body)?)
    }

    /// Creates or replaces a key; returns its index (last segment).
    pub async fn set(&self, key: &str, value: &Value) -> Result<String, ClientError> {
        self.post(&format!("/{key}"), value).await
    }

    /// Adds a value under `prefix/*` with a new time-ordered key; returns that key's index.
    pub async fn push(&self, glob: &str, value: &Value) -> Result<String, ClientError> {
        self.post(&format!("/{glob}"), value).await
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
        self.request(Method::DELETE, &format!("/{key}"), &[], "")
            .await?
            .ok()
            .map(|_| ())
    }

    /// Follows one key: every update carries the whole meta object.
    pub fn subscribe(&self, key: &str) -> Subscription {
        Subscription::start(self.ws_url(&format!("/{key}")), false)
    }

    /// Follows a glob: every update carries the whole list, newest first.
    pub fn subscribe_list(&self, glob: &str) -> Subscription {
        Subscription::start(self.ws_url(&format!("/{glob}")), true)
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The current value after a frame (`snapshot`: the frame was a full value, not a patch).
    Update {
        /// The server's version, as sent (`?v=` on reconnect).
        version: String,
        /// Whether the frame was a snapshot.
        snapshot: bool,
        /// The meta object, or for lists the array of meta objects newest first.
        value: Value,
    },
    /// The socket closed (the close code, if any); a reconnect follows.
    Disconnected {
        /// The server's close code.
        code: Option<u16>,
    },
}

/// A live subscription. Dropping it stops the background task.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// ooo's Go client schedule: 300 ms for the first 30 retries, 2 s until 100, then 10 s.
pub fn backoff(attempt: u32) -> Duration {
    match attempt {
        0..=30 => Duration::from_millis(300),
        31..=100 => Duration::from_secs(2),
        _ => Duration::from_secs(10),
    }
}

fn newest_first(v: &Value) -> Value {
    let mut items = v.as_array().cloned().unwrap_or_default();
    let created = |x: &Value| x.get("created").and_then(Value::as_i64).unwrap_or(0);
    items.sort_by_key(|x| std::cmp::Reverse(created(x)));
    Value::Array(items)
}

impl Subscription {
    fn start(url: String, list: bool) -> Subscription {
        // Small: a consumer that stops reading stops the task reading the socket too, and the
        // server then cuts it off as lagging (and it resumes later with `?v=`).
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            let mut version: Option<String> = None;
            let mut cache = Value::Null;
            let mut attempt = 0u32;
            loop {
                let target = match &version {
                    Some(v) => format!("{url}?v={v}"),
                    None => url.clone(),
                };
                let connected = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_tungstenite::connect_async(target),
                )
                .await;
                if let Ok(Ok((mut ws, _))) = connected {
                    attempt = 0;
                    let mut code = None;
                    while let Some(msg) = ws.next().await {
                        let data = match msg {
                            Ok(Message::Binary(b)) => b,
                            Ok(Message::Text(t)) => Bytes::from(t.as_str().to_owned()),
                            Ok(Message::Close(f)) => {
                                code = f.map(|f| u16::from(f.code));
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => break,
                        };
                        let Ok(env) = serde_json::from_slice::<Value>(&data) else {
                            break;
                        };
                        let snapshot = env.get("snapshot").and_then(Value::as_bool) == Some(true);
                        let v = env
                            .get("version")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let body = env.get("data").cloned().unwrap_or(Value::Null);
                        if snapshot {
                            cache = body;
                        } else {
                            let applied = serde_json::from_value::<json_patch::Patch>(body)
                                .ok()
                                .and_then(|p| json_patch::patch(&mut cache, &p).ok());
                            if applied.is_none() {
                                // The cache no longer matches the server: start over.
                                version = None;
                                break;
                            }
                        }
                        version = Some(v.clone());
                        let value = if list {
                            newest_first(&cache)
                        } else {
                            cache.clone()
                        };
                        let ev = Event::Update {
                            version: v,
                            snapshot,
                            value,
                        };
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    if tx.send(Event::Disconnected { code }).await.is_err() {
                        return;
                    }
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(backoff(attempt)).await;
            }
        });
        Subscription { rx, task }
    }

    /// The next event; `None` only if the background task ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next update, skipping disconnect notices, waiting at most `limit`.
    pub async fn next_update(&mut self, limit: Duration) -> Option<(String, bool, Value)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Event::Update {
                    version,
                    snapshot,
                    value,
                })) => return Some((version, snapshot, value)),
                Ok(Some(Event::Disconnected { .. })) => continue,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_backoff() {
        let c = Client::new("http://127.0.0.1:1/").unwrap();
        assert_eq!(c.ws_url("/a/*"), "ws://127.0.0.1:1/a/*");
        assert!(Client::new("ftp://x").is_err());
        assert_eq!(backoff(1), Duration::from_millis(300));
        assert_eq!(backoff(50), Duration::from_secs(2));
        assert_eq!(backoff(500), Duration::from_secs(10));
    }
}
