//! JSON values: parsing request bodies under limits, and ooo's deep merge.
//!
//! Owns what a body may look like (one JSON value, nothing after it, bounded nesting) and the
//! three ways a document is patched in place: ooo's deep merge (§1.6), RFC 7396 merge patch and
//! RFC 6902 JSON Patch (the last two through the `json-patch` crate). It never touches storage.

use serde_json::{Map, Value};

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not one well-formed JSON value.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Nested deeper than the configured limit.
    #[error("invalid JSON: nested {depth} levels deep, the limit is {max}")]
    TooDeep {
        /// Depth found (at least).
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// ooo merge: an object would be replaced by a non-object.
    #[error("merge: patch value must be object for key {0:?}")]
    MergeType(String),
    /// ooo merge: an object patch on an array used a key that is not an index of it.
    #[error("merge: {0:?} is not an index of the array")]
    MergeIndex(String),
    /// ooo merge: the patch body is not an object (an array or a scalar merges nothing).
    #[error("merge: the patch must be a JSON object, not {0}; to replace the whole value use POST or PUT, or send Content-Type: application/merge-patch+json (RFC 7396)")]
    MergeNotObject(&'static str),
    /// RFC 6902 patch body is not a patch, or an operation failed.
    #[error("json patch: {0}")]
    Patch(String),
}

/// Parses a request body: exactly one JSON value (whitespace around it is fine), at most
/// `max_depth` levels of arrays and objects.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("recursion limit exceeded") {
            return JsonError::Syntax(format!("nested too deep (the limit is {max_depth})"));
        }
        JsonError::Syntax(msg)
    })?;
    let d = depth(&v);
    if d > max_depth {
        return Err(JsonError::TooDeep {
            depth: d,
            max: max_depth,
        });
    }
    Ok(v)
}

/// Nesting depth: a scalar is 0, `[]` and `{}` are 1, `[[1]]` is 2.
pub fn depth(v: &Value) -> usize {
    // Iterative, so a hostile value cannot overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => max = max.max(d),
        }
    }
    max
}

/// Compact encoding (no spaces), keeping object key order.
pub fn encode(v: &Value) -> Vec<u8> {
    // Serializing a Value cannot fail: keys are strings and numbers are finite.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Sorts object keys recursively (ooo re-encodes merged documents through a Go map, which sorts).
pub fn sort_keys(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.sort_keys();
            o.values_mut().for_each(sort_keys);
        }
        Value::Array(a) => a.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// ooo's PATCH: deep merge of `patch` into `doc` (§1.6). Objects merge recursively; arrays and
/// scalars replace; an object patch on an array merges by index keys; `null` sets null (it never
/// deletes); replacing an object by a non-object is an error and leaves `doc` untouched. A
/// non-object patch body is refused (ooo answers it with 200 and changes nothing, which hides
/// the client's mistake). The result has sorted keys.
pub fn ooo_merge(doc: &Value, patch: &Value) -> Result<Value, JsonError> {
    let Value::Object(p) = patch else {
        return Err(JsonError::MergeNotObject(kind_name(patch)));
    };
    let mut out = doc.clone();
    match &mut out {
        Value::Object(o) => merge_object(o, p)?,
        Value::Array(a) => merge_array(a, p)?,
        other => *other = patch.clone(),
    }
    sort_keys(&mut out);
    Ok(out)
}

/// "an array", "a number", ...: for messages about a value of the wrong kind.
pub fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn merge_object(doc: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), JsonError> {
    for (k, pv) in patch {
        match (doc.get_mut(k), pv) {
            (Some(Value::Object(d)), Value::Object(p)) => merge_object(d, p)?,
            (Some(Value::Object(_)), _) => return Err(JsonError::MergeType(k.clone())),
            (Some(Value::Array(d)), Value::Object(p)) => merge_array(d, p)?,
            (_, pv) => {
                doc.insert(k.clone(), pv.clone());
            }
        }
    }
    Ok(())
}

fn merge_array(doc: &mut [Value], patch: &Map<String, Value>) -> Result<(), JsonError> {
    for (k, pv) in patch {
        let i: usize = k.parse().map_err(|_| JsonError::MergeIndex(k.clone()))?;
        let slot = doc
            .get_mut(i)
            .ok_or_else(|| JsonError::MergeIndex(k.clone()))?;
        match (slot, pv) {
            (Value::Object(d), Value::Object(p)) => merge_object(d, p)?,
            (Value::Object(_), _) => return Err(JsonError::MergeType(k.clone())),
            (Value::Array(d), Value::Object(p)) => merge_array(d, p)?,
            (slot, pv) => *slot = pv.clone(),
        }
    }
    Ok(())
}

/// RFC 7396 merge patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// Parses an RFC 6902 patch document.
pub fn parse_patch(v: Value) -> Result<json_patch::Patch, JsonError> {
    serde_json::from_value(v).map_err(|e| JsonError::Patch(e.to_string()))
}

/// RFC 6902 JSON Patch, all or nothing.
pub fn json_patch(doc: &Value, patch: &json_patch::Patch) -> Result<Value, JsonError> {
    let mut out = doc.clone();
    json_patch::patch(&mut out, patch).map_err(|e| JsonError::Patch(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies() {
        assert_eq!(parse(b" {\"a\":1} ", 8), Ok(json!({"a":1})));
        assert!(matches!(parse(b"oops", 8), Err(JsonError::Syntax(_))));
        assert!(matches!(parse(b"", 8), Err(JsonError::Syntax(_))));
        assert!(matches!(
            parse(b"{\"a\":1} x", 8),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(parse(b"{bad", 8), Err(JsonError::Syntax(_))));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            parse(deep.as_bytes(), 64),
            Err(JsonError::TooDeep {
                depth: 100,
                max: 64
            })
        );
        let very_deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(matches!(
            parse(very_deep.as_bytes(), 64),
            Err(JsonError::Syntax(_))
        ));
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a":[1]})), 2);
    }

    #[test]
    fn order_is_kept_on_encode() {
        let v = parse(br#"{"b":1, "a":2}"#, 8).unwrap();
        assert_eq!(encode(&v), br#"{"b":1,"a":2}"#);
    }

    #[test]
    fn ooo_merge_cases() {
        let check = |doc: Value, patch: Value, want: Result<Value, JsonError>| {
            assert_eq!(ooo_merge(&doc, &patch), want, "{doc} + {patch}");
        };
        check(json!({"a":1}), json!({"b":2}), Ok(json!({"a":1,"b":2})));
        check(
            json!({"two":"x","one":"test"}),
            json!({"two":"testing"}),
            Ok(json!({"one":"test","two":"testing"})),
        );
        check(
            json!({"n":{"x":1}}),
            json!({"n":{"y":2}}),
            Ok(json!({"n":{"x":1,"y":2}})),
        );
        check(json!({"a":[1,2]}), json!({"a":[3]}), Ok(json!({"a":[3]})));
        check(
            json!({"a":[{"x":1},2]}),
            json!({"a":{"0":{"y":2}}}),
            Ok(json!({"a":[{"x":1,"y":2},2]})),
        );
        check(json!({"a":1}), json!({"a":null}), Ok(json!({"a":null})));
        check(
            json!({"nest":{"x":1}}),
            json!({"nest":"x"}),
            Err(JsonError::MergeType("nest".into())),
        );
        check(
            json!({"nest":{"x":1}}),
            json!({"nest":null}),
            Err(JsonError::MergeType("nest".into())),
        );
        check(
            json!({"a":[1]}),
            json!({"a":{"5":1}}),
            Err(JsonError::MergeIndex("5".into())),
        );
        check(
            json!({"a":1}),
            json!([1]),
            Err(JsonError::MergeNotObject("an array")),
        );
        check(
            json!({"a":1}),
            json!(5),
            Err(JsonError::MergeNotObject("a number")),
        );
        // Keys come out sorted.
        let out = ooo_merge(&json!({"z":1,"a":1}), &json!({"m":1})).unwrap();
        assert_eq!(encode(&out), br#"{"a":1,"m":1,"z":1}"#);
    }

    #[test]
    fn rfc7396_and_rfc6902() {
        assert_eq!(
            merge_patch(&json!({"a":1,"b":2}), &json!({"a":null,"c":3})),
            json!({"b":2,"c":3})
        );
        let p = parse_patch(json!([{"op":"add","path":"/x","value":1}])).unwrap();
        assert_eq!(json_patch(&json!({}), &p), Ok(json!({"x":1})));
        let bad =
            parse_patch(json!([{"op":"add","path":"/x","value":1},{"op":"remove","path":"/nope"}]))
                .unwrap();
        assert!(json_patch(&json!({}), &bad).is_err());
        assert!(parse_patch(json!([{"op":"frobnicate","path":"/x"}])).is_err());
    }
}
