//! The Worker: routes each request to its Durable Object (`route`), serves `/` itself, and merges
//! the keys API across namespaces.

use serde_json::{json, Value};
use stateline_core::web;
use worker::{event, Context, Env, Method, Request, RequestInit, Response, Result};

use crate::object::{BINDING, NAMESPACES, NS_HEADER};
use crate::route::{self, Mode, Target};
use crate::{assets, convert};

// The merge asks each namespace for pages of the largest size the objects allow, and pages the
// merged list with the same limit.
fn keys_page() -> usize {
    stateline_core::Config::default().max_keys_page
}

fn mode(env: &Env) -> std::result::Result<Mode, String> {
    let v = env.var("STATELINE_MODE").ok().map(|v| v.to_string());
    Mode::parse(v.as_deref())
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let mode = match mode(&env) {
        Ok(m) => m,
        Err(e) => return convert::problem(500, "config", &e),
    };
    let url = req.url()?;
    let path = url.path().to_string();
    let query = url.query().unwrap_or("").to_string();
    if path.starts_with("/_edge/") {
        // Internal routes between objects never come from outside.
        return convert::problem(404, "no-route", "no such route");
    }
    let head = convert::head(&req)?;
    let websocket = web::is_websocket(head.headers());
    let events = web::wants_events(head.headers());
    let method = req.method();
    if convert::has_body(&method)
        && web::declares_too_large(head.headers(), stateline_core::Config::default().max_body)
    {
        // Refused here, before the request reaches its object, and without touching the body
        // stream: forwarded, the stream would still be piped into the object's request after
        // the object had answered 413, and workerd fails such a read ("Can't read from request
        // stream after response has been sent") by restarting the worker mid-request.
        return convert::with_cors(web::too_large(
            &path,
            stateline_core::Config::default().max_body,
        ));
    }
    // A rename across namespaces is refused here, which needs the target from the body.
    // So is a transaction over keys of more than one namespace: its keys are in its body.
    let mut body: Option<Vec<u8>> = None;
    let mut rename_to = None;
    let mut tx_keys = Vec::new();
    let reads_body = path.starts_with("/_rename/") || path == "/_tx";
    if mode == Mode::Namespace && method == Method::Post && reads_body {
        let b = match req.bytes().await {
            Ok(b) => b,
            Err(_) => return convert::refusal(&head, &stateline_core::Error::BodyUnreadable),
        };
        if path == "/_tx" {
            tx_keys = web::tx_keys(&b);
        } else {
            rename_to = serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v.get("to").and_then(Value::as_str).map(str::to_string));
        }
        body = Some(b);
    }
    let target = route::target(
        mode,
        method.as_ref(),
        &path,
        &query,
        websocket,
        events,
        rename_to.as_deref(),
        &tx_keys,
    );
    match target {
        Target::Refuse(status, why) => convert::problem(status, "spans-namespaces", &why),
        Target::Root => assets::serve(&method, &path, head.headers()),
        Target::Health => convert::text(
            200,
            "application/json",
            json!({"status": "ok", "mode": "namespace"}).to_string(),
        ),
        Target::AllKeys => all_keys(&env, &query, &head).await,
        Target::AllState(api) => all_state(&env, &api, head.headers()).await,
        Target::Object(name) => {
            let ns = if mode == Mode::Single || name == route::SYSTEM {
                String::new()
            } else {
                name.clone()
            };
            let stub = env
                .durable_object(BINDING)?
                .id_from_name(&name)?
                .get_stub()?;
            // Incoming headers are immutable: forward a copy with the namespace set by us (a
            // client cannot choose it), and the body as read above or as the original stream.
            let headers = worker::Headers::new();
            for (k, v) in req.headers().entries() {
                if !k.eq_ignore_ascii_case(NS_HEADER) {
                    headers.append(&k, &v)?;
                }
            }
            headers.set(NS_HEADER, &ns)?;
            let body: Option<wasm_bindgen::JsValue> = match body {
                Some(b) => Some(js_sys::Uint8Array::from(b.as_slice()).into()),
                None => req.inner().body().map(Into::into),
            };
            let init = RequestInit {
                method: method.clone(),
                headers,
                body,
                ..Default::default()
            };
            let forwarded = Request::new_with_init(url.as_str(), &init)?;
            stub.fetch_with_request(forwarded).await
        }
    }
}

/// `GET /?api=keys` across namespaces: one namespace when the filter names it, otherwise every
/// namespace in the registry, merged in key order and paged as the core pages.
async fn all_keys(env: &Env, query: &str, head: &http::Request<bytes::Bytes>) -> Result<Response> {
    let headers = head.headers();
    let q = web::query_pairs(query);
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let filter = get("filter").unwrap_or("");
    let objects = env.durable_object(BINDING)?;
    let first = filter.split('/').next().unwrap_or("");
    if !first.is_empty() && !first.contains('*') && filter.contains('/') {
        // The filter stays inside one namespace: that object pages it itself.
        let stub = objects.id_from_name(first)?.get_stub()?;
        return stub
            .fetch_with_request(as_caller(
                &format!("https://edge/?{query}&ns={first}"),
                headers,
            )?)
            .await;
    }
    let max = keys_page();
    let kp = match web::KeysPage::parse(&q, max) {
        Ok(kp) => kp,
        Err(e) => return convert::refusal(head, &e),
    };
    let names = namespaces(env).await?;
    // (key, its metadata item as the object listed it), merged across namespaces.
    let mut keys: Vec<(String, Value)> = Vec::new();
    let enc = |s: &str| {
        js_sys::encode_uri_component(s)
            .as_string()
            .unwrap_or_default()
    };
    for ns in names {
        if !filter.is_empty() && !filter.contains('*') && !ns.starts_with(first) {
            continue;
        }
        let stub = objects.id_from_name(&ns)?.get_stub()?;
        let mut p = 1;
        loop {
            let url = format!(
                "https://edge/?api=keys&ns={}&filter={}&limit={max}&page={p}",
                enc(&ns),
                enc(filter)
            );
            let mut r = stub.fetch_with_request(as_caller(&url, headers)?).await?;
            let mut v: Value = r.json().await?;
            let got: Vec<String> = v
                .get("keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            // `items` runs parallel to `keys` (the core lists both in the same order).
            let mut items = match v.get_mut("items").map(Value::take) {
                Some(Value::Array(a)) => a.into_iter(),
                _ => Vec::new().into_iter(),
            };
            let total = v.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            let n = got.len();
            keys.extend(got.into_iter().map(|k| {
                let item = items.next().unwrap_or_else(|| json!({ "key": k.as_str() }));
                (k, item)
            }));
            if n < max || p * max >= total {
                break;
            }
            p += 1;
        }
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    let page = &keys[kp.range(keys.len())];
    let names: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).collect();
    let items: Vec<Value> = page.iter().map(|(_, item)| item.clone()).collect();
    let body = kp.body(&names, &items, keys.len());
    let mut r = convert::text(200, "application/json", body.to_string())?;
    r.headers_mut().set("cache-control", "no-cache")?;
    Ok(r)
}

/// Every namespace in the registry (the system object's list).
async fn namespaces(env: &Env) -> Result<Vec<String>> {
    let registry = env
        .durable_object(BINDING)?
        .id_from_name(route::SYSTEM)?
        .get_stub()?;
    let mut r = registry
        .fetch_with_str(&format!("https://edge{NAMESPACES}"))
        .await?;
    r.json().await
}

/// `GET /?api=info` and `?api=state` across namespaces, so the UI's State page shows the whole
/// deployment: counts summed, pools listed together (each object answers as the caller, so the
/// rules filter what it shows), the system object (the clock stream's) included.
async fn all_state(env: &Env, api: &str, headers: &http::HeaderMap) -> Result<Response> {
    let objects = env.durable_object(BINDING)?;
    let mut names = namespaces(env).await?;
    names.insert(0, route::SYSTEM.to_string());
    let mut parts = Vec::with_capacity(names.len());
    for ns in &names {
        let stub = objects.id_from_name(ns)?.get_stub()?;
        let q = if ns == route::SYSTEM {
            String::new()
        } else {
            format!("&ns={ns}")
        };
        let mut r = stub
            .fetch_with_request(as_caller(&format!("https://edge/?api={api}{q}"), headers)?)
            .await?;
        if r.status_code() == 200 {
            parts.push(r.json::<Value>().await?);
        }
    }
    let sum = |field: &str| -> u64 { parts.iter().filter_map(|p| p.get(field)?.as_u64()).sum() };
    let body = if api == "state" {
        let pools: Vec<Value> = parts
            .iter()
            .filter_map(|p| p.get("pools")?.as_array().cloned())
            .flatten()
            .collect();
        json!({"pools": pools, "totalConnections": sum("totalConnections"), "namespaces": names.len() - 1})
    } else {
        let mut v = parts.first().cloned().unwrap_or_else(|| json!({}));
        for f in ["keys", "valueBytes", "pools", "subscribers", "logEntries"] {
            v[f] = json!(sum(f));
        }
        // Sequence numbers are per object: there is no deployment-wide one.
        v["seq"] = Value::Null;
        v["namespaces"] = json!(names.len() - 1);
        v
    };
    let mut r = convert::text(200, "application/json", body.to_string())?;
    r.headers_mut().set("cache-control", "no-cache")?;
    Ok(r)
}

/// A GET to an object on behalf of the caller: with its token, so each object lists only the
/// keys this caller may read (access rules).
fn as_caller(url: &str, caller: &http::HeaderMap) -> Result<Request> {
    let headers = worker::Headers::new();
    if let Some(a) = caller
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        headers.set("authorization", a)?;
    }
    let init = RequestInit {
        method: Method::Get,
        headers,
        ..Default::default()
    };
    Request::new_with_init(url, &init)
}
