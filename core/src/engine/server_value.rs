//! Server values: placeholders in a written value that the engine replaces when it applies the
//! write, like Firebase's `ServerValue.TIMESTAMP`.
//!
//! `{".sv":"timestamp"}` (an object with exactly that one member), anywhere in a set's or push's
//! value or in a patch (ooo merge, RFC 7396, the `value` of RFC 6902 `add`/`replace`), nested at
//! any depth, becomes the write's own timestamp in milliseconds since the Unix epoch: the clock
//! time the write is stamped with (`created`/`updated`, in ns) divided by 10^6. It is resolved in
//! the request's value before the patch applies, so the stored value, the forwarded RFC 6902
//! patch, the write filters and the schema all see the number. An object with a `.sv` member
//! that is not that placeholder is refused (400): a typo must not be stored as data.

use serde_json::Value;

use super::ops::Source;
use super::PatchKind;
use crate::error::Error;

/// The placeholder's member name.
pub const SV: &str = ".sv";

/// Replaces every placeholder in the source's value with `stamp_ns` as milliseconds.
pub(super) fn resolve(source: &mut Source, stamp_ns: i64) -> Result<(), Error> {
    let ms = stamp_ns.div_euclid(1_000_000);
    match source {
        Source::Given(v) => resolve_value(v.tree(), ms),
        Source::Patch(PatchKind::Merge(v) | PatchKind::MergePatch(v)) => resolve_value(v, ms),
        Source::Patch(PatchKind::JsonPatch(p)) => {
            use json_patch::PatchOperation as P;
            for op in p.0.iter_mut() {
                if let P::Add(json_patch::AddOperation { value, .. })
                | P::Replace(json_patch::ReplaceOperation { value, .. }) = op
                {
                    resolve_value(value, ms)?;
                }
            }
            Ok(())
        }
        Source::Nothing | Source::Add(_) | Source::Moved => Ok(()),
    }
}

/// Whether the source holds a placeholder (most writes do not: then the clock is not read).
pub(super) fn present(source: &Source) -> bool {
    match source {
        Source::Given(super::Given::Tree(v)) => has(v),
        // A canonical text spells a `.sv` key only one way; this may also find it in a string
        // value, and then the tree is built and looked at.
        // Found from its dots (memchr: a word at a time), not by comparing at every byte.
        Source::Given(super::Given::Text(t, _)) => memchr::memchr_iter(b'.', t)
            .any(|i| i > 0 && t.get(i - 1..i + 4) == Some(&b"\".sv\""[..])),
        Source::Patch(PatchKind::Merge(v) | PatchKind::MergePatch(v)) => has(v),
        Source::Patch(PatchKind::JsonPatch(p)) => {
            use json_patch::PatchOperation as P;
            p.0.iter().any(|op| match op {
                P::Add(o) => has(&o.value),
                P::Replace(o) => has(&o.value),
                _ => false,
            })
        }
        Source::Nothing | Source::Add(_) | Source::Moved => false,
    }
}

fn has(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key(SV) || o.values().any(has),
        Value::Array(a) => a.iter().any(has),
        _ => false,
    }
}

fn resolve_value(v: &mut Value, ms: i64) -> Result<(), Error> {
    match v {
        Value::Object(o) if o.contains_key(SV) => {
            if o.len() == 1 && o.get(SV).and_then(Value::as_str) == Some("timestamp") {
                *v = Value::from(ms);
                Ok(())
            } else {
                Err(Error::BadRequest(format!(
                    "unknown server value {}: the only one is {{\".sv\":\"timestamp\"}} (an object with no other member)",
                    String::from_utf8_lossy(&crate::json::encode(v))
                )))
            }
        }
        Value::Object(o) => o.values_mut().try_for_each(|x| resolve_value(x, ms)),
        Value::Array(a) => a.iter_mut().try_for_each(|x| resolve_value(x, ms)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::engine::Given;

    // The value as a tree and as the canonical text an HTTP body arrives as (a build without
    // exact numbers has no text path).
    fn both(v: Value) -> Vec<Source> {
        let text = Given::text(&crate::json::encode(&v), 64, 1000);
        assert_eq!(text.is_some(), cfg!(feature = "exact-numbers"));
        [Some(v.into()), text]
            .into_iter()
            .flatten()
            .map(Source::Given)
            .collect()
    }

    fn given(s: Source) -> Value {
        let Source::Given(v) = s else { unreachable!() };
        v.into_tree()
    }

    #[test]
    fn placeholders_become_the_stamp_in_ms_at_any_depth() {
        for mut s in
            both(json!({"at":{".sv":"timestamp"},"l":[1,{"x":{".sv":"timestamp"}}],"s":".sv"}))
        {
            assert!(present(&s));
            resolve(&mut s, 1_700_000_000_123_456_789).unwrap();
            assert_eq!(
                given(s),
                json!({"at":1_700_000_000_123i64,"l":[1,{"x":1_700_000_000_123i64}],"s":".sv"})
            );
        }
        for mut top in both(json!({".sv":"timestamp"})) {
            resolve(&mut top, 5_000_000).unwrap();
            assert!(matches!(given(top), Value::Number(ref n) if n.as_i64() == Some(5)));
        }
        for s in both(json!({"a":[1,"timestamp"],"sv":".s"})) {
            assert!(!present(&s));
        }
    }

    #[test]
    fn unknown_server_values_are_refused() {
        for bad in [
            json!({".sv":"now"}),
            json!({".sv":"timestamp","x":1}),
            json!([{".sv":1}]),
        ] {
            for mut s in both(bad.clone()) {
                assert!(present(&s), "{bad}");
                assert!(
                    matches!(resolve(&mut s, 1), Err(Error::BadRequest(_))),
                    "{bad}"
                );
            }
        }
    }

    #[test]
    fn the_engine_stamps_set_push_and_patch_with_the_writes_own_time() {
        use crate::clock::Tick;
        use crate::engine::{Cond, Config, Engine, Op};
        use crate::filter::Filters;
        use crate::store::Ttl;
        let tick = Tick::from_wall(1_700_000_000_000_000_000);
        let mut e = Engine::new(tick, Config::default(), Filters::new());
        let ts = json!({".sv":"timestamp"});
        let set = Op::Set {
            key: "a".into(),
            value: json!({"at": ts, "n": 1}).into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        };
        e.execute_as_system(tick, set).unwrap();
        let a = e.store().get("a").unwrap().clone();
        assert_eq!(a.data()["at"], json!(a.created / 1_000_000));
        let patch = Op::Patch {
            key: "a".into(),
            patch: PatchKind::JsonPatch(
                serde_json::from_value(json!([{"op":"add","path":"/p","value":{"deep":[ts]}}]))
                    .unwrap(),
            ),
            cond: Cond::Always,
        };
        let applied = e.execute_as_system(tick, patch).unwrap();
        let a = e.store().get("a").unwrap().clone();
        assert_eq!(a.data()["p"]["deep"][0], json!(a.updated / 1_000_000));
        // Subscribers get the resolved patch, never the placeholder.
        let fwd = applied.changes[0].patch.as_ref().unwrap();
        assert!(!serde_json::to_string(&**fwd).unwrap().contains(".sv"));
        let push = Op::Push {
            target: "l/*".into(),
            value: ts.clone().into(),
            ttl: Ttl::Clear,
        };
        let applied = e.execute_as_system(tick, push).unwrap();
        let c = &applied.changes[0];
        let entry = c.entry.as_ref().unwrap();
        assert_eq!(*entry.data(), json!(entry.created / 1_000_000));
        // A refused placeholder changes nothing.
        let seq = e.store().last_seq();
        let bad = Op::Set {
            key: "a".into(),
            value: json!({".sv":"increment"}).into(),
            ttl: Ttl::Clear,
            cond: Cond::Always,
        };
        assert!(e.execute_as_system(tick, bad).is_err());
        assert_eq!(e.store().last_seq(), seq);
    }
}
