//! ooo's meta object on the wire: `{"created","updated","index","path","data"}` (§1.3).
//!
//! Owns the exact bytes of a stored object as readers see it, built by concatenation from the
//! entry's already-serialized value (serialize once per change, never per reader). Keys are
//! UTF-8 without control characters, so only `"` and `\` in them need JSON escaping
//! ([`push_str`]).

use bytes::Bytes;
use serde_json::Value;

use crate::key::last_segment;
use crate::store::Entry;

/// ooo's empty object, what an absent key reads as on a subscription.
pub const EMPTY_OBJECT: &[u8] = br#"{"created":0,"updated":0,"index":"","data":{}}"#;

/// Appends the meta object of `key` to `out`.
pub fn write(out: &mut Vec<u8>, key: &str, e: &Entry) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"created\":");
    out.extend_from_slice(n.format(e.created).as_bytes());
    out.extend_from_slice(b",\"updated\":");
    out.extend_from_slice(n.format(e.updated).as_bytes());
    out.extend_from_slice(b",\"index\":");
    push_str(out, last_segment(key));
    out.extend_from_slice(b",\"path\":");
    push_str(out, key);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&e.json);
    out.push(b'}');
}

/// Appends `s` as a JSON string. Keys and patterns hold no control characters (the key
/// syntax refuses them), so only `"` and `\` are escaped; anything else is copied as is.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // serde_json writes the quotes and every escape JSON needs.
        out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// The meta object of `key` as bytes.
pub fn bytes(key: &str, e: &Entry) -> Bytes {
    let mut out = Vec::with_capacity(room(key, e));
    write(&mut out, key, e);
    out.into()
}

// The bytes [`write`] appends, unless the key needs escapes: 52 of names, quotes and
// punctuation, two numbers of at most 20 (`-9223372036854775808`), the key twice (its last
// segment is part of it) and the value. Less (80 fixed) was short once `updated` has its 19
// digits, and the Vec grew: a copy and a reallocation on every read of a key written twice.
fn room(key: &str, e: &Entry) -> usize {
    92 + key.len() * 2 + e.json.len()
}

/// Appends a JSON array of meta objects.
pub fn write_list<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = (&'a str, &'a Entry)>) {
    out.push(b'[');
    for (i, (k, e)) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, k, e);
    }
    out.push(b']');
}

/// The meta object as a JSON value (for filters, which work on values).
pub fn value(key: &str, e: &Entry) -> Value {
    serde_json::json!({
        "created": e.created,
        "updated": e.updated,
        "index": last_segment(key),
        "path": key,
        "data": e.data().clone(),
    })
}

/// The empty object as a value.
pub fn empty_value() -> Value {
    serde_json::json!({"created": 0, "updated": 0, "index": "", "data": {}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_as_json() {
        let (tree, json) = Entry::value(serde_json::json!(1));
        let e = Entry {
            created: 1,
            updated: 0,
            revision: 0,
            seq: 1,
            expires: crate::store::MaybeTime::NONE,
            json,
            tree,
        };
        for key in [
            "名前",
            "a/\"q\"",
            "back\\slash/😀",
            "users/alice@example.com",
        ] {
            let parsed: Value = serde_json::from_slice(&bytes(key, &e)).unwrap();
            assert_eq!(parsed, value(key, &e), "{key}");
            assert_eq!(parsed["path"], key);
        }
    }

    proptest::proptest! {
        // The numbers are written as digits by hand (no `String` per number): any `i64`, the
        // negative and the extremes included, reads back as the same number.
        #[test]
        fn any_times_read_back_unchanged(created: i64, updated: i64) {
            let (tree, json) = Entry::value(serde_json::json!({"a": [1, "x"]}));
            let e = Entry {
                created,
                updated,
                revision: 0,
                seq: 1,
                expires: crate::store::MaybeTime::NONE,
                json,
                tree,
            };
            let parsed: Value = serde_json::from_slice(&bytes("k/i", &e)).unwrap();
            proptest::prop_assert_eq!(&parsed, &value("k/i", &e));
            proptest::prop_assert_eq!(parsed["created"].as_i64(), Some(created));
            proptest::prop_assert_eq!(parsed["updated"].as_i64(), Some(updated));
        }
    }

    #[test]
    fn room_holds_the_largest_numbers() {
        let (tree, json) = Entry::value(serde_json::json!({"b": [1, 2]}));
        let e = Entry {
            created: i64::MIN,
            updated: i64::MIN,
            revision: 0,
            seq: 1,
            expires: crate::store::MaybeTime::NONE,
            json,
            tree,
        };
        for key in ["a", "books/abc/名前"] {
            let mut out = Vec::with_capacity(room(key, &e));
            let cap = out.capacity();
            write(&mut out, key, &e);
            assert_eq!(
                out.len(),
                room(key, &e) - key.len() + last_segment(key).len()
            );
            assert_eq!(out.capacity(), cap, "{key}: grew");
        }
    }

    #[test]
    fn exact_field_order() {
        let (tree, json) = Entry::value(serde_json::json!({"b":1,"a":2}));
        let e = Entry {
            created: 5,
            updated: 0,
            revision: 0,
            seq: 1,
            expires: crate::store::MaybeTime::NONE,
            json,
            tree,
        };
        assert_eq!(
            &bytes("books/abc", &e)[..],
            br#"{"created":5,"updated":0,"index":"abc","path":"books/abc","data":{"b":1,"a":2}}"#
        );
        let parsed: Value = serde_json::from_slice(&bytes("books/abc", &e)).unwrap();
        assert_eq!(parsed, value("books/abc", &e));
        let mut out = Vec::new();
        write_list(
            &mut out,
            [("x", &e), ("y", &e)].iter().map(|(k, e)| (*k, *e)),
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&out)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            serde_json::from_slice::<Value>(EMPTY_OBJECT).unwrap(),
            empty_value()
        );
    }
}
