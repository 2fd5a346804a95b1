//! The extension points of an embedded server (ooo's Go API, in Rust): the audit hook that sees
//! every request first, custom endpoints with described request and response types (listed at
//! `/?api=endpoints`), and subscribe/unsubscribe hooks. Filters themselves are the core's
//! (`stateline_core::filter`); [`crate::Server::builder`] registers both.
//!
//! Owns matching endpoint paths (`/policies/{id}`) and refusing overlapping ones at registration.
//! Hooks run under no lock except the subscribe hooks, which run under the hub lock (keep them
//! short, and never call back into the server from them).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use stateline_core::{Identity, Pattern};

/// What the audit hook is shown of a request.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path (without the query).
    pub path: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Who the bearer token says it is (anonymous without `--rules`).
    pub identity: &'a Identity,
}

/// The audit hook: `Err(reason)` refuses the request with 401 before anything else runs.
pub type AuditFn = Arc<dyn Fn(&AuditEvent<'_>) -> Result<(), String> + Send + Sync>;
/// Told before a subscription is joined; `Err(reason)` refuses it (403, or close 4003).
pub type SubscribeFn = Arc<dyn Fn(&Pattern, &Identity) -> Result<(), String> + Send + Sync>;
/// Told when a subscriber leaves a pattern (unsubscribe, disconnect, lagging).
pub type UnsubscribeFn = Arc<dyn Fn(&Pattern) + Send + Sync>;

/// A request to a custom endpoint.
#[derive(Debug)]
pub struct EndpointRequest {
    /// Method.
    pub method: Method,
    /// The `{name}` segments of the endpoint's path, by name.
    pub vars: BTreeMap<String, String>,
    /// Query parameters, decoded.
    pub query: Vec<(String, String)>,
    /// Headers.
    pub headers: HeaderMap,
    /// The body (read under `--max-body` and `--deadline`).
    pub body: Bytes,
    /// Who the bearer token says it is.
    pub identity: Identity,
    /// The server's state, to read and write from the handler.
    pub state: crate::State,
}

/// What a handler answers.
pub type EndpointResponse = http::Response<Bytes>;
/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = EndpointResponse> + Send>>;
/// An endpoint's handler.
pub type Handler = Arc<dyn Fn(EndpointRequest) -> HandlerFuture + Send + Sync>;

/// One method of an endpoint, described for `/?api=endpoints` (ooo's `MethodSpec`).
#[derive(Debug, Clone)]
pub struct MethodSpec {
    /// The method.
    pub method: Method,
    /// The request body's type: an example value or a JSON Schema, as you prefer to show it.
    pub request: Option<Value>,
    /// The response body's type, likewise.
    pub response: Option<Value>,
    /// Query parameters and what they mean.
    pub params: Vec<(String, String)>,
}

impl MethodSpec {
    /// A method with nothing described yet.
    pub fn new(method: Method) -> MethodSpec {
        MethodSpec {
            method,
            request: None,
            response: None,
            params: Vec::new(),
        }
    }
    /// Describes the request body.
    pub fn request(mut self, v: Value) -> MethodSpec {
        self.request = Some(v);
        self
    }
    /// Describes the response body.
    pub fn response(mut self, v: Value) -> MethodSpec {
        self.response = Some(v);
        self
    }
    /// Describes a query parameter.
    pub fn param(mut self, name: &str, description: &str) -> MethodSpec {
        self.params.push((name.into(), description.into()));
        self
    }
}

/// A custom HTTP endpoint (ooo's `EndpointConfig`).
#[derive(Clone)]
pub struct Endpoint {
    path: String,
    segs: Vec<Option<String>>,
    description: String,
    vars: Vec<(String, String)>,
    methods: Vec<MethodSpec>,
    handler: Option<Handler>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .finish()
    }
}

/// An endpoint could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The path is not `/seg/{var}/...` of key characters.
    #[error("endpoint path {0:?}: segments must be key characters or {{name}}")]
    Path(String),
    /// The path is one of the server's own routes.
    #[error("endpoint path {0:?} is a system route")]
    Reserved(String),
    /// Another endpoint matches the same requests.
    #[error("endpoint {new:?} overlaps endpoint {existing:?}")]
    Conflict {
        /// Being registered.
        new: String,
        /// Registered before.
        existing: String,
    },
    /// No handler, or no method.
    #[error("endpoint {0:?} needs a handler and at least one method")]
    Incomplete(String),
}

impl Endpoint {
    /// An endpoint at `path` (segments are literals or `{name}`).
    pub fn new(path: &str, description: &str) -> Endpoint {
        Endpoint {
            path: path.to_string(),
            segs: Vec::new(),
            description: description.to_string(),
            vars: Vec::new(),
            methods: Vec::new(),
            handler: None,
        }
    }
    /// Describes a `{name}` path variable.
    pub fn var(mut self, name: &str, description: &str) -> Endpoint {
        self.vars.push((name.into(), description.into()));
        self
    }
    /// Adds a method.
    pub fn method(mut self, m: MethodSpec) -> Endpoint {
        self.methods.push(m);
        self
    }
    /// Sets the handler.
    pub fn handler<F, Fut>(mut self, f: F) -> Endpoint
    where
        F: Fn(EndpointRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = EndpointResponse> + Send + 'static,
    {
        self.handler = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    fn compile(mut self) -> Result<Endpoint, EndpointError> {
        if self.handler.is_none() || self.methods.is_empty() {
            return Err(EndpointError::Incomplete(self.path));
        }
        let rest = self
            .path
            .strip_prefix('/')
            .ok_or_else(|| EndpointError::Path(self.path.clone()))?;
        let mut segs = Vec::new();
        for s in rest.split('/') {
            if s.len() > 2 && s.starts_with('{') && s.ends_with('}') {
                segs.push(None);
            } else if stateline_core::key::validate_key(s).is_ok()
                || (s.starts_with('_') && stateline_core::key::validate_key(&s[1..]).is_ok())
            {
                segs.push(Some(s.to_string()));
            } else {
                return Err(EndpointError::Path(self.path.clone()));
            }
        }
        const SYSTEM: &[&str] = &[
            "_ws", "_health", "_metrics", "_backup", "_incr", "_take", "_rename",
        ];
        if let Some(Some(first)) = segs.first() {
            if SYSTEM.contains(&first.as_str()) {
                return Err(EndpointError::Reserved(self.path.clone()));
            }
        }
        self.segs = segs;
        Ok(self)
    }

    fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segs.len() {
            return None;
        }
        let names = self
            .path
            .trim_start_matches('/')
            .split('/')
            .collect::<Vec<_>>();
        let mut vars = BTreeMap::new();
        for ((seg, part), name) in self.segs.iter().zip(&parts).zip(&names) {
            match seg {
                Some(l) if l != part => return None,
                Some(_) => {}
                None => {
                    vars.insert(name[1..name.len() - 1].to_string(), part.to_string());
                }
            }
        }
        Some(vars)
    }

    fn overlaps(&self, other: &Endpoint) -> bool {
        self.segs.len() == other.segs.len()
            && self
                .segs
                .iter()
                .zip(&other.segs)
                .all(|(a, b)| match (a, b) {
                    (Some(x), Some(y)) => x == y,
                    _ => true,
                })
    }

    fn describe(&self) -> Value {
        json!({
            "path": self.path,
            "description": self.description,
            "vars": self.vars.iter().map(|(n, d)| (n.clone(), Value::String(d.clone()))).collect::<serde_json::Map<_, _>>(),
            "methods": self.methods.iter().map(|m| (m.method.to_string(), json!({
                "request": m.request,
                "response": m.response,
                "params": m.params.iter().map(|(n, d)| (n.clone(), Value::String(d.clone()))).collect::<serde_json::Map<_, _>>(),
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// Everything registered on the builder besides filters.
#[derive(Clone, Default)]
pub struct Extensions {
    pub(crate) audit: Vec<AuditFn>,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) on_subscribe: Vec<SubscribeFn>,
    pub(crate) on_unsubscribe: Vec<UnsubscribeFn>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("audit", &self.audit.len())
            .field("endpoints", &self.endpoints)
            .field("on_subscribe", &self.on_subscribe.len())
            .field("on_unsubscribe", &self.on_unsubscribe.len())
            .finish()
    }
}

impl Extensions {
    /// Registers an endpoint; overlapping paths are refused.
    pub fn add_endpoint(&mut self, e: Endpoint) -> Result<(), EndpointError> {
        let e = e.compile()?;
        if let Some(x) = self.endpoints.iter().find(|x| x.overlaps(&e)) {
            return Err(EndpointError::Conflict {
                new: e.path,
                existing: x.path.clone(),
            });
        }
        self.endpoints.push(e);
        Ok(())
    }

    /// Runs the audit hooks in order; the first refusal wins.
    pub fn audit(&self, ev: &AuditEvent<'_>) -> Result<(), String> {
        self.audit.iter().try_for_each(|f| f(ev))
    }

    /// Asks the subscribe hooks.
    pub fn subscribe(&self, p: &Pattern, who: &Identity) -> Result<(), String> {
        self.on_subscribe.iter().try_for_each(|f| f(p, who))
    }

    /// Tells the unsubscribe hooks.
    pub fn unsubscribe(&self, p: &Pattern) {
        for f in &self.on_unsubscribe {
            f(p);
        }
    }

    /// The endpoint for `path`, with its variables, and the handler for `method` (`None`: the
    /// endpoint exists but not for this method).
    pub fn route(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(BTreeMap<String, String>, Result<Handler, StatusCode>)> {
        self.endpoints.iter().find_map(|e| {
            let vars = e.matches(path)?;
            let ok = e.methods.iter().any(|m| m.method == *method);
            let h = e.handler.clone().filter(|_| ok);
            Some((vars, h.ok_or(StatusCode::METHOD_NOT_ALLOWED)))
        })
    }

    /// `/?api=endpoints`.
    pub fn describe(&self) -> Value {
        json!({"endpoints": self.endpoints.iter().map(Endpoint::describe).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(path: &str) -> Endpoint {
        Endpoint::new(path, "test")
            .method(MethodSpec::new(Method::GET))
            .handler(|_| async { http::Response::new(Bytes::new()) })
    }

    #[test]
    fn endpoints_register_and_route() {
        let mut x = Extensions::default();
        x.add_endpoint(ep("/policies/{id}")).unwrap();
        x.add_endpoint(ep("/policies/{id}/rules")).unwrap();
        assert!(matches!(
            x.add_endpoint(ep("/policies/special")),
            Err(EndpointError::Conflict { .. })
        ));
        assert!(matches!(
            x.add_endpoint(ep("/_ws/{x}")),
            Err(EndpointError::Reserved(_))
        ));
        assert!(matches!(
            x.add_endpoint(ep("/a\u{1}b")),
            Err(EndpointError::Path(_))
        ));
        assert!(matches!(
            x.add_endpoint(Endpoint::new("/x", "no handler")),
            Err(EndpointError::Incomplete(_))
        ));
        let (vars, h) = x.route(&Method::GET, "/policies/7").unwrap();
        assert_eq!(vars.get("id").map(String::as_str), Some("7"));
        assert!(h.is_ok());
        let (_, h) = x.route(&Method::POST, "/policies/7").unwrap();
        assert_eq!(h.err(), Some(StatusCode::METHOD_NOT_ALLOWED));
        assert!(x.route(&Method::GET, "/other").is_none());
        assert_eq!(x.describe()["endpoints"][0]["path"], "/policies/{id}");
    }
}
