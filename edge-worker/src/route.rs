//! Which Durable Object serves a request: pure functions of the request line, tested natively.
//!
//! Owns the edge's partitioning rule and nothing else: in namespace mode (the default) every key
//! lives in the object named after its first segment, so a namespace is one strongly consistent
//! actor and namespaces scale out across objects; in single mode one object holds everything. It
//! must not touch Workers APIs, so `cargo test -p stateline-edge` runs it on the host.

/// The object that serves every request in single mode, and the system routes in namespace mode.
pub const SYSTEM: &str = "_system";

/// How keys map to objects (`STATELINE_MODE` in wrangler.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One object per first key segment.
    Namespace,
    /// One object for everything.
    Single,
}

impl Mode {
    /// Parses the configured mode; anything unknown is a configuration error worth failing on.
    pub fn parse(s: Option<&str>) -> Result<Mode, String> {
        match s.map(str::trim) {
            None | Some("") | Some("namespace") => Ok(Mode::Namespace),
            Some("single") => Ok(Mode::Single),
            Some(other) => Err(format!(
                "STATELINE_MODE must be \"namespace\" or \"single\", not {other:?}"
            )),
        }
    }
}

/// Where the worker sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Forward to the object with this name.
    Object(String),
    /// `GET /` without `?api=`, `/_client.js`, `/_ui/*`: the client script or the UI, served by
    /// the worker itself from its bundle.
    Root,
    /// `GET /?api=keys` in namespace mode: ask every namespace in the registry and merge.
    AllKeys,
    /// `GET /?api=info` or `?api=state` in namespace mode: every namespace's, summed or merged.
    AllState(String),
    /// `GET /_health` in namespace mode without `?ns=`: the worker answers for itself.
    Health,
    /// Refused before any object is woken: status and reason.
    Refuse(u16, String),
}

pub use stateline_core::session::{key_namespace, op_keys, pattern_namespace};

fn query_ns(query: &str) -> Option<String> {
    stateline_core::web::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

// The object `?ns=` names, or a refusal when the name is no key segment.
fn named(ns: String) -> Target {
    match stateline_core::key::validate_key(&ns) {
        Ok(()) => Target::Object(ns),
        Err(e) => Target::Refuse(400, format!("?ns={ns:?} is not a namespace: {e}")),
    }
}

fn spans(what: &str) -> Target {
    Target::Refuse(
        400,
        format!(
            "{what} spans namespaces; this deployment keeps one Durable Object per namespace \
             (the first key segment). Name a namespace, or deploy with STATELINE_MODE = \"single\""
        ),
    )
}

/// Decides where a request goes. `websocket` and `events` say whether it upgrades or asks for
/// Server-Sent Events; `rename_to` is the target key of a `POST /_rename/...` (read from its body
/// by the caller), so a rename across namespaces is refused here; `tx_keys` are the keys a
/// `POST /_tx` compares and writes (read from its body by the caller): a transaction runs in
/// the one object of their namespace.
#[allow(clippy::too_many_arguments)]
pub fn target(
    mode: Mode,
    method: &str,
    path: &str,
    query: &str,
    websocket: bool,
    events: bool,
    rename_to: Option<&str>,
    tx_keys: &[String],
) -> Target {
    let get = method == "GET" || method == "HEAD";
    let has_api = stateline_core::web::query_pairs(query)
        .iter()
        .any(|(k, _)| k == "api");
    if get
        && !websocket
        && !events
        && (path == "/" && !has_api || path == "/_client.js" || path.starts_with("/_ui/"))
    {
        return Target::Root;
    }
    if mode == Mode::Single {
        return Target::Object(SYSTEM.into());
    }
    // The namespace of the key the core will see: `/a%2Db` is the key `a-b`, in the object `a-b`.
    // A path that does not decode is the core's to refuse, with the reason.
    let Ok(path) = stateline_core::key::decode_http_path(path) else {
        return Target::Object(SYSTEM.into());
    };
    let path = &*path;
    let ns = query_ns(query);
    if path == "/" {
        if websocket {
            // ooo's clock stream: any object has the clock; the system object serves it.
            return Target::Object(SYSTEM.into());
        }
        if events {
            return spans("a subscription to every key");
        }
        if let Some(ns) = ns {
            return named(ns);
        }
        let api = stateline_core::web::query_pairs(query)
            .into_iter()
            .find(|(k, _)| k == "api")
            .map(|(_, v)| v);
        return match api.as_deref() {
            Some("keys") => Target::AllKeys,
            Some(api @ ("info" | "state")) => Target::AllState(api.to_string()),
            _ => Target::Object(SYSTEM.into()),
        };
    }
    if let Some(rest) = path.strip_prefix("/_") {
        let (route, key) = rest.split_once('/').unwrap_or((rest, ""));
        return match route {
            "ws" => match ns {
                Some(ns) => named(ns),
                None => Target::Refuse(
                    400,
                    "in namespace mode /_ws serves one namespace per connection: connect to \
                     /_ws?ns=<first key segment> (or deploy with STATELINE_MODE = \"single\")"
                        .into(),
                ),
            },
            "health" => match ns {
                Some(ns) => named(ns),
                None => Target::Health,
            },
            // Each object counts its own; `?ns=` picks one (the system object otherwise).
            "metrics" => ns.map_or(Target::Object(SYSTEM.into()), named),
            "incr" | "take" | "rename" if !key.is_empty() => {
                let ns = key_namespace(key);
                if let Some(to) = rename_to {
                    if key_namespace(to.trim_start_matches('/')) != ns {
                        return spans("a rename from one namespace to another");
                    }
                }
                Target::Object(object_for(ns))
            }
            // A body that names no key (or does not parse) is the core's to answer.
            "tx" if key.is_empty() => match tx_keys.first() {
                None => Target::Object(SYSTEM.into()),
                Some(first) => {
                    let ns = key_namespace(first.trim_start_matches('/'));
                    if tx_keys
                        .iter()
                        .any(|k| key_namespace(k.trim_start_matches('/')) != ns)
                    {
                        spans("a transaction over keys of more than one namespace")
                    } else {
                        Target::Object(ns.into())
                    }
                }
            },
            _ => Target::Object(SYSTEM.into()),
        };
    }
    let first = path[1..].split('/').next().unwrap_or("");
    if first == "*" {
        return spans(&format!("the pattern {path}"));
    }
    if first.is_empty() {
        // `//x` and the like: the object's core answers with the exact key error.
        return Target::Object(SYSTEM.into());
    }
    Target::Object(object_for(first))
}

// The object of a namespace; one the key syntax refuses (a control character, ...) goes to the
// system object, whose core refuses the request with the exact key error (a namespace name
// travels in the runtime's own calls, which must never see such bytes).
fn object_for(ns: &str) -> String {
    if stateline_core::key::validate_key(ns).is_ok() {
        ns.into()
    } else {
        SYSTEM.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(method: &str, path: &str, query: &str, ws: bool, sse: bool) -> Target {
        target(Mode::Namespace, method, path, query, ws, sse, None, &[])
    }

    #[test]
    fn percent_escapes_route_to_the_decoded_namespace() {
        assert_eq!(
            ns("GET", "/a%2Db/x", "", false, false),
            Target::Object("a-b".into())
        );
        assert_eq!(
            ns("GET", "/a%2", "", false, false),
            Target::Object(SYSTEM.into())
        );
        // UTF-8 namespaces are namespaces; one the key syntax refuses is the core's to refuse.
        assert_eq!(
            ns("GET", "/%E5%90%8D%E5%89%8D/x", "", false, false),
            Target::Object("名前".into())
        );
        assert_eq!(
            ns("POST", "/a%07b", "", false, false),
            Target::Object(SYSTEM.into())
        );
        assert_eq!(
            ns("POST", "/_incr/bad%0Akey", "", false, false),
            Target::Object(SYSTEM.into())
        );
        assert!(matches!(
            ns("GET", "/_ws", "ns=a%01", true, false),
            Target::Refuse(400, _)
        ));
        assert_eq!(
            ns("GET", "/_ws", "ns=%F0%9F%98%80", true, false),
            Target::Object("😀".into())
        );
    }

    #[test]
    fn namespace_mode_routes_by_first_segment() {
        let obj = |n: &str| Target::Object(n.into());
        assert_eq!(ns("GET", "/books/1", "", false, false), obj("books"));
        assert_eq!(ns("POST", "/books/*", "", false, false), obj("books"));
        assert_eq!(ns("GET", "/books", "", true, false), obj("books"));
        assert_eq!(ns("GET", "/books/", "", false, true), obj("books"));
        assert_eq!(ns("POST", "/_incr/n/c", "", false, false), obj("n"));
        assert_eq!(ns("GET", "/_ws", "ns=chat", true, false), obj("chat"));
        assert_eq!(
            ns("GET", "/", "api=info&ns=chat", false, false),
            obj("chat")
        );
        assert_eq!(ns("GET", "/", "api=keys", false, false), Target::AllKeys);
        assert_eq!(
            ns("GET", "/", "api=state", false, false),
            Target::AllState("state".into())
        );
        assert_eq!(ns("GET", "/", "", true, false), obj(SYSTEM));
        assert_eq!(ns("GET", "/_health", "", false, false), Target::Health);
        assert_eq!(ns("GET", "/", "", false, false), Target::Root);
        assert_eq!(ns("GET", "/_client.js", "", false, false), Target::Root);
        assert_eq!(ns("GET", "/_ui/app.js", "", false, false), Target::Root);
    }

    #[test]
    fn patterns_across_namespaces_are_refused() {
        for t in [
            ns("GET", "/*/x", "", false, false),
            ns("GET", "/*", "", true, false),
            ns("GET", "/", "", false, true),
            ns("GET", "/_ws", "", true, false),
            target(
                Mode::Namespace,
                "POST",
                "/_rename/a/1",
                "",
                false,
                false,
                Some("b/1"),
                &[],
            ),
            target(
                Mode::Namespace,
                "POST",
                "/_tx",
                "",
                false,
                false,
                None,
                &["a/1".into(), "b/1".into()],
            ),
        ] {
            assert!(matches!(t, Target::Refuse(400, _)), "{t:?}");
        }
        assert_eq!(
            target(
                Mode::Namespace,
                "POST",
                "/_rename/a/1",
                "",
                false,
                false,
                Some("a/2"),
                &[],
            ),
            Target::Object("a".into())
        );
        let tx = |keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            target(
                Mode::Namespace,
                "POST",
                "/_tx",
                "",
                false,
                false,
                None,
                &keys,
            )
        };
        assert_eq!(tx(&["a/1", "a/2/x"]), Target::Object("a".into()));
        assert_eq!(tx(&[]), Target::Object(SYSTEM.into()));
    }

    #[test]
    fn single_mode_sends_everything_to_one_object() {
        let one = Target::Object(SYSTEM.into());
        for (m, p, q, ws, sse) in [
            ("GET", "/*/x", "", false, false),
            ("GET", "/", "", false, true),
            ("GET", "/_ws", "", true, false),
            ("GET", "/", "api=keys", false, false),
        ] {
            assert_eq!(target(Mode::Single, m, p, q, ws, sse, None, &[]), one);
        }
        assert_eq!(
            target(Mode::Single, "GET", "/", "", false, false, None, &[]),
            Target::Root
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse(Some("single")), Ok(Mode::Single));
        assert!(Mode::parse(Some("sharded")).is_err());
    }
}
