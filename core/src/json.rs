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
    /// More values (nodes) than the configured limit: refused before the tree is built.
    #[error("invalid JSON: the body holds more than {max} values (nodes), the limit")]
    TooManyNodes {
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

/// Most values (nodes: every object, array, string, number, `true`, `false`, `null`) one body
/// may hold. A parsed value costs far more memory than its text (a `{}` is 2 bytes of JSON and
/// about 80 bytes in memory, so 10 MiB of `[{},{},..]` is ~260 MB), and everything bounded by
/// bytes (the body cap, the change log) would be 25 times over its budget without this. At the
/// default a body's tree stays within about 25 MB whatever its shape; a body beyond it gets 400.
pub const MAX_NODES: usize = 1 << 18;

/// Parses a request body: exactly one JSON value (whitespace around it is fine), at most
/// `max_depth` levels of arrays and objects and at most [`MAX_NODES`] values.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    parse_limited(body, max_depth, MAX_NODES)
}

/// How many values (nodes) the JSON text holds, counted on the bytes without building anything;
/// stops counting past `limit`. For invalid JSON the count is meaningless (the parser refuses
/// it anyway).
pub fn count_nodes(body: &[u8], limit: usize) -> usize {
    let mut n = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    // The last byte outside strings and whitespace: a scalar starts after one of `[`, `,`, `:`
    // or at the beginning.
    let mut prev = b'[';
    for &b in body {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
                prev = b'"';
            }
            continue;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b'"' => {
                in_str = true;
                n += 1;
            }
            // A string before `:` was an object key, not a value.
            b':' => n = n.saturating_sub(1),
            b'{' | b'[' => n += 1,
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' if matches!(prev, b'[' | b',' | b':') => n += 1,
            _ => {}
        }
        prev = b;
        if n > limit {
            break;
        }
    }
    n
}

/// Nesting the parser accepts (serde_json's recursion limit of 128 refuses the 128th level): no
/// stored value is deeper, since every one was parsed once.
pub const PARSER_MAX_DEPTH: usize = 127;

/// Checks that JSON text read back from storage (or another node) is what this process would
/// have stored: exactly one value that [`parse`] accepts, so the tree built from it later
/// ([`crate::store::Entry::data`]) always parses. Unlike [`parse`] it builds nothing: the
/// grammar is checked by serde_json's skipping parser, and what skipping does not check is
/// checked here: UTF-8, escapes that are lone UTF-16 surrogates, and the nesting limit.
pub fn check_stored(text: &[u8]) -> Result<(), JsonError> {
    let bad = |why: &str| Err(JsonError::Syntax(why.to_string()));
    if !cfg!(feature = "exact-numbers") {
        // Without exact numbers a number beyond a double's range is refused by the parser and
        // not by skipping: parse it, which checks everything below too (no build of this crate
        // reads storage this way).
        return serde_json::from_slice::<Value>(text)
            .map(drop)
            .map_err(|e| JsonError::Syntax(e.to_string()));
    }
    skipped(text)?;
    // The grammar is valid here, so brackets outside strings are structure.
    let (mut depth, mut i, mut in_str) = (0usize, 0usize, false);
    while i < text.len() {
        let b = text[i];
        i += 1;
        if in_str {
            match b {
                b'"' => in_str = false,
                b'\\' => {
                    if text.get(i) == Some(&b'u') {
                        let unit = hex4(text, i + 1);
                        i += 5;
                        if (0xD800..0xDC00).contains(&unit) {
                            // A high surrogate must be followed by an escaped low one.
                            let low = (text.get(i..i + 2) == Some(&b"\\u"[..]))
                                .then(|| hex4(text, i + 2))
                                .filter(|l| (0xDC00..0xE000).contains(l));
                            if low.is_none() {
                                return bad("a lone leading surrogate in a \\u escape");
                            }
                            i += 6;
                        } else if (0xDC00..0xE000).contains(&unit) {
                            return bad("a lone trailing surrogate in a \\u escape");
                        }
                    } else {
                        i += 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > PARSER_MAX_DEPTH {
                    return bad("nested too deep");
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

// What serde_json's skipping parser checks (the grammar: one value, its numbers, literals and
// escapes), and the UTF-8 that skipping does not: without building a tree.
fn skipped(text: &[u8]) -> Result<(), JsonError> {
    if std::str::from_utf8(text).is_err() {
        return Err(JsonError::Syntax("not UTF-8".into()));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|e| JsonError::Syntax(e.to_string()))
}

// The four hex digits at `at` (the grammar was checked: they are there).
fn hex4(text: &[u8], at: usize) -> u32 {
    text.get(at..at + 4)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// Keys of the objects open at once (an object's own and those of the objects around it) that
/// [`canonical`] keeps to find a repeated key. A body with more is not refused: it takes the
/// parser's path. The bound keeps the check on the stack and its key comparisons linear in the
/// body's size (at most this many per key).
pub const CANONICAL_KEYS: usize = 64;

/// Whether `body` is exactly what parsing it and encoding the tree ([`parse_limited`], then
/// [`encode`]) would give back, under the same limits: then a write can store the body's bytes
/// as they are and build the tree only if something needs it. Returns the value's nesting depth
/// ([`depth`]) when it is; `None` when it is not or this cannot tell cheaply (whitespace outside
/// strings, a `\u` or `\/` escape, a repeated object key, more than [`CANONICAL_KEYS`] open
/// keys, invalid JSON, a limit passed, or a build without exact numbers, where the encoder
/// rewrites numbers): the caller parses, which refuses what is invalid with its own error.
pub fn canonical(body: &[u8], max_depth: usize, max_nodes: usize) -> Option<usize> {
    if !cfg!(feature = "exact-numbers") || body.len() > u32::MAX as usize {
        return None;
    }
    // Outside strings every byte must be one of the ASCII tokens below; inside them, UTF-8.
    // (A word at a time while the bytes are ASCII.)
    std::str::from_utf8(body).ok()?;
    let max_depth = max_depth.min(PARSER_MAX_DEPTH);
    // The byte ranges of the open objects' keys, and per open container whether it is an
    // object and where its keys start (at most `CANONICAL_KEYS`, so a byte: the arrays are
    // zeroed on every call, and kept small they stay a few cache lines).
    let mut keys = [(0u32, 0u32); CANONICAL_KEYS];
    let mut open_keys = 0usize;
    let mut frames = [(false, 0u8); PARSER_MAX_DEPTH];
    let (mut depth, mut deepest, mut nodes) = (0usize, 0usize, 0usize);
    // The grammar, checked in the same pass (this is the only check a stored body gets).
    let mut next = Next::Value;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match b {
            b'"' => {
                let key = match next {
                    Next::Key | Next::KeyOrClose => true,
                    Next::Value | Next::ValueOrClose => false,
                    Next::Colon | Next::After => return None,
                };
                let start = i + 1;
                let mut j = start;
                loop {
                    // To the next quote or backslash at once (memchr compares a word at a
                    // time): most of a body's bytes are in its strings.
                    j += memchr::memchr2(b'"', b'\\', body.get(j..)?)?;
                    if body.get(j) == Some(&b'"') {
                        break;
                    }
                    // A backslash: the escapes the encoder writes itself; any other (`\u`,
                    // `\/`, or not an escape) it would write differently.
                    match body.get(j + 1)? {
                        b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f' => j += 2,
                        _ => return None,
                    }
                }
                // JSON strings hold no control characters as they are (the encoder escapes
                // them; the parser refuses them).
                if body.get(start..j)?.iter().any(|&c| c < 0x20) {
                    return None;
                }
                if key {
                    let key = &body[start..j];
                    let (_, first) = *frames.get(depth.checked_sub(1)?)?;
                    let seen = keys.get(usize::from(first)..open_keys)?;
                    if seen
                        .iter()
                        .any(|&(s, e)| body.get(s as usize..e as usize) == Some(key))
                    {
                        return None;
                    }
                    *keys.get_mut(open_keys)? = (start as u32, j as u32);
                    open_keys += 1;
                    next = Next::Colon;
                } else {
                    nodes += 1;
                    next = Next::After;
                }
                i = j;
            }
            b'{' | b'[' => {
                if !matches!(next, Next::Value | Next::ValueOrClose) {
                    return None;
                }
                nodes += 1;
                if depth >= max_depth {
                    return None;
                }
                *frames.get_mut(depth)? = (b == b'{', u8::try_from(open_keys).ok()?);
                depth += 1;
                deepest = deepest.max(depth);
                next = if b == b'{' {
                    Next::KeyOrClose
                } else {
                    Next::ValueOrClose
                };
            }
            b'}' | b']' => {
                let object = b == b'}';
                let may = match next {
                    Next::After => true,
                    Next::KeyOrClose => object,
                    Next::ValueOrClose => !object,
                    _ => false,
                };
                depth = depth.checked_sub(1)?;
                let (is_object, first) = *frames.get(depth)?;
                if !may || is_object != object {
                    return None;
                }
                open_keys = usize::from(first);
                next = Next::After;
            }
            b',' => {
                if next != Next::After || depth == 0 {
                    return None;
                }
                next = if frames.get(depth - 1)?.0 {
                    Next::Key
                } else {
                    Next::Value
                };
            }
            b':' => {
                if next != Next::Colon {
                    return None;
                }
                next = Next::Value;
            }
            b'-' | b'0'..=b'9' => {
                if !matches!(next, Next::Value | Next::ValueOrClose) {
                    return None;
                }
                nodes += 1;
                i = number_end(body, i)?;
                next = Next::After;
                // `i` is the number's last byte.
            }
            b't' | b'f' | b'n' => {
                if !matches!(next, Next::Value | Next::ValueOrClose) {
                    return None;
                }
                nodes += 1;
                let word: &[u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if body.get(i..i + word.len())? != word {
                    return None;
                }
                i += word.len() - 1;
                next = Next::After;
            }
            // Whitespace outside strings (the encoder writes none), or not JSON.
            _ => return None,
        }
        if nodes > max_nodes {
            return None;
        }
        i += 1;
    }
    // One value, whole (a byte after it was refused above: at the top nothing may follow).
    (depth == 0 && next == Next::After).then_some(deepest)
}

// What [`canonical`]'s scan takes next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    // A value (the start, after `:`, after an array's `,`).
    Value,
    // A value or `]` (after `[`).
    ValueOrClose,
    // An object's key (after an object's `,`).
    Key,
    // A key or `}` (after `{`).
    KeyOrClose,
    // `:` after a key.
    Colon,
    // After a value: `,` or a close, or the end at the top.
    After,
}

// The index of the last byte of the JSON number starting at `at`, if it is one written as the
// encoder writes it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?(e[+-][0-9]+)?` (`E`, and `e` without a
// sign, it would rewrite).
fn number_end(body: &[u8], at: usize) -> Option<usize> {
    let digits = |from: usize| {
        body.get(from..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut i = at + usize::from(body.get(at) == Some(&b'-'));
    match body.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits(i),
        _ => return None,
    }
    if body.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    match body.get(i) {
        Some(b'e') if matches!(body.get(i + 1), Some(b'+' | b'-')) => {
            let n = digits(i + 2);
            if n == 0 {
                return None;
            }
            i += 2 + n;
        }
        Some(b'e' | b'E' | b'.' | b'+' | b'-' | b'0'..=b'9') => return None,
        _ => {}
    }
    Some(i - 1)
}

/// [`parse`] with an explicit cap on values (nodes), checked on the bytes before the tree is
/// built, so a refused body never costs more than its bytes.
pub fn parse_limited(body: &[u8], max_depth: usize, max_nodes: usize) -> Result<Value, JsonError> {
    if count_nodes(body, max_nodes) > max_nodes {
        return Err(JsonError::TooManyNodes { max: max_nodes });
    }
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
    // Iterative, so a hostile value cannot overflow the stack here. Only containers are
    // pushed (a scalar adds nothing to its container's depth), so a flat value, which is most
    // written values, allocates nothing.
    let container = |x: &&Value| matches!(x, Value::Array(_) | Value::Object(_));
    let mut max = 0;
    let mut stack = Vec::new();
    let mut next = Some((v, 0usize));
    while let Some((v, d)) = next.take().or_else(|| stack.pop()) {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().filter(container).map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().filter(container).map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Compact encoding (no spaces), keeping object key order.
pub fn encode(v: &Value) -> Vec<u8> {
    // As serde_json's `to_vec` starts.
    let mut out = Vec::with_capacity(128);
    encode_into(v, &mut out);
    out
}

/// [`encode`] appended to `out`.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    // Serializing a Value into memory cannot fail: keys are strings and numbers are finite.
    let _ = serde_json::to_writer(out, v);
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

/// Parses an RFC 6902 patch document: an array of operation objects, each with `op`, `path`,
/// and `from` or `value` as its kind needs; other members are ignored (RFC 6902 §4).
///
/// Read by hand rather than through `json-patch`'s serde derive: its operations are an internally
/// tagged enum, which serde buffers, and the buffer cannot hold numbers kept as written (beyond
/// 64 bits, `-0`); and serde's derive brings float formatting and its buffering machinery into
/// the browser client, about 20 KiB of wasm (docs/BENCHMARKS.md, client size).
pub fn parse_patch(v: Value) -> Result<json_patch::Patch, JsonError> {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::PatchOperation as P;
    use json_patch::{
        AddOperation, CopyOperation, MoveOperation, RemoveOperation, ReplaceOperation,
        TestOperation,
    };
    let Value::Array(ops) = v else {
        return Err(JsonError::Patch(
            "invalid type: expected a sequence of operations".into(),
        ));
    };
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let bad = |what: &str| JsonError::Patch(format!("operation {i}: {what}"));
        let Value::Object(mut o) = op else {
            return Err(bad("not an object"));
        };
        let kind = match o.remove("op") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(bad("`op` is not a string")),
            None => return Err(bad("missing field `op`")),
        };
        let mut pointer = |name: &str| match o.remove(name) {
            Some(Value::String(s)) => {
                PointerBuf::parse(s).map_err(|e| bad(&format!("`{name}`: {e}")))
            }
            Some(_) => Err(bad(&format!("`{name}` is not a string"))),
            None => Err(bad(&format!("missing field `{name}`"))),
        };
        let path = pointer("path")?;
        let parsed = match kind.as_str() {
            "remove" => P::Remove(RemoveOperation { path }),
            "move" => P::Move(MoveOperation { from: pointer("from")?, path }),
            "copy" => P::Copy(CopyOperation { from: pointer("from")?, path }),
            "add" | "replace" | "test" => {
                let value = o.remove("value").ok_or_else(|| bad("missing field `value`"))?;
                match kind.as_str() {
                    "add" => P::Add(AddOperation { path, value }),
                    "replace" => P::Replace(ReplaceOperation { path, value }),
                    _ => P::Test(TestOperation { path, value }),
                }
            }
            other => {
                return Err(bad(&format!(
                    "unknown op `{other}`, expected one of `add`, `remove`, `replace`, `move`, `copy`, `test`"
                )))
            }
        };
        out.push(parsed);
    }
    Ok(json_patch::Patch(out))
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
    use proptest::prelude::*;
    use serde_json::json;

    // JSON texts, valid and not quite, in the shapes clients send: few keys (so some repeat),
    // numbers written every way, escapes of every kind, whitespace here and there.
    fn arb_text() -> impl Strategy<Value = String> {
        let ws = prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\n")];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            prop_oneof![
                Just("0"),
                Just("-0"),
                Just("1.50"),
                Just("1e2"),
                Just("1E+2"),
                Just("-3.0e-7"),
                Just("2e+0"),
                Just("1E-2"),
                Just("12345678901234567890123456789"),
                Just("0.1"),
                Just("01"),
                Just("1."),
            ]
            .prop_map(String::from),
            prop_oneof![
                Just(r#""a""#),
                Just(r#""""#),
                Just(r#""é😀""#),
                Just(r#""q\"q""#),
                Just(r#""b\\s""#),
                Just(r#""\n\t\r\b\f""#),
                Just(r#""\u0041""#),
                Just(r#""\/""#),
                Just(r#""\ud800""#),
                Just(r#""\x""#),
                Just("\"\u{7f}\""),
            ]
            .prop_map(String::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                prop::collection::vec((inner.clone(), ws.clone()), 0..5).prop_map(|items| {
                    let items: Vec<String> =
                        items.into_iter().map(|(v, w)| format!("{w}{v}")).collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec(
                    (
                        prop_oneof![Just("a"), Just("b"), Just("c"), Just("a\\\"")],
                        inner,
                        ws
                    ),
                    0..5
                )
                .prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, w)| format!("\"{k}\":{w}{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        // A text said to be canonical is one the parser takes and encodes back to the same
        // bytes, at the depth said: storing it as it came is storing what the tree would give.
        #[test]
        fn a_canonical_text_is_its_own_encoding(t in arb_text(), tail in prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("1")]) {
            let t = format!("{t}{tail}");
            if let Some(d) = canonical(t.as_bytes(), 64, MAX_NODES) {
                let v = parse_limited(t.as_bytes(), 64, MAX_NODES).expect("a canonical text parses");
                prop_assert_eq!(encode(&v), t.as_bytes().to_vec());
                prop_assert_eq!(depth(&v), d);
                // The node limit is the parser's, exactly.
                let n = count_nodes(t.as_bytes(), MAX_NODES);
                prop_assert_eq!(canonical(t.as_bytes(), 64, n), Some(d));
                prop_assert_eq!(canonical(t.as_bytes(), 64, n - 1), None);
            }
        }

        // And what the encoder writes (without control characters, which it writes as `\u`
        // escapes) is found canonical.
        #[test]
        fn an_encoded_value_is_canonical(t in arb_text()) {
            if !cfg!(feature = "exact-numbers") {
                // Its encoder rewrites numbers: no text is taken as it came.
                prop_assert_eq!(canonical(t.as_bytes(), 64, MAX_NODES), None);
                return Ok(());
            }
            if let Ok(v) = parse_limited(t.as_bytes(), 64, MAX_NODES) {
                let e = encode(&v);
                let has_u = e.windows(2).any(|w| w == b"\\u");
                if !has_u {
                    prop_assert_eq!(canonical(&e, 64, MAX_NODES), Some(depth(&v)));
                }
            }
        }
    }

    proptest! {
        // More cases than the default: a byte that breaks the grammar lands on the one place
        // that shows a missed check only now and then.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        // A text one edit away from one of those (a byte dropped, put in or replaced by one
        // of the grammar's): mostly not JSON, which the scan must refuse by itself, since it
        // is the only check a body it takes gets.
        #[test]
        fn a_text_one_edit_away_is_taken_only_if_it_is_its_own_encoding(
            t in arb_text(),
            at in any::<prop::sample::Index>(),
            edit in 0..3u8,
            byte in prop::sample::select(b",:[]{}\"-0123.eE+tfnlsu ".to_vec()),
        ) {
            let mut b = t.into_bytes();
            if b.is_empty() {
                return Ok(());
            }
            let i = at.index(b.len());
            match edit {
                0 => {
                    b.remove(i);
                }
                1 => b.insert(i, byte),
                _ => b[i] = byte,
            }
            if let Some(d) = canonical(&b, 64, MAX_NODES) {
                let v = parse_limited(&b, 64, MAX_NODES).expect("a canonical text parses");
                prop_assert_eq!(encode(&v), b.clone());
                prop_assert_eq!(depth(&v), d);
            }
        }
    }

    #[test]
    fn canonical_texts_and_the_ones_that_are_not() {
        if !cfg!(feature = "exact-numbers") {
            // Its encoder rewrites numbers: no text is taken as it came.
            assert_eq!(canonical(b"[1]", 64, MAX_NODES), None);
            return;
        }
        for t in [
            r#"{"m":"a small value of about forty bytes"}"#,
            "1",
            "-0",
            "1.50",
            "1e+2",
            "-3.0e-07",
            r#""""#,
            "[]",
            "{}",
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#,
            r#"["q\"q","\\","\n\t"]"#,
            "[\"\u{7f}é😀\"]",
        ] {
            let v = parse(t.as_bytes(), 64).unwrap();
            assert_eq!(encode(&v), t.as_bytes());
            assert_eq!(
                canonical(t.as_bytes(), 64, MAX_NODES),
                Some(depth(&v)),
                "{t}"
            );
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for (t, max_depth, max_nodes) in [
            (" 1".to_string(), 64, MAX_NODES),
            ("1\n".to_string(), 64, MAX_NODES),
            (r#"{"a": 1}"#.to_string(), 64, MAX_NODES),
            (r#"{"a":1,"a":2}"#.to_string(), 64, MAX_NODES),
            (r#"{"a":{"b":1},"a":2}"#.to_string(), 64, MAX_NODES),
            (r#"["\u0041"]"#.to_string(), 64, MAX_NODES),
            ("1E+2".to_string(), 64, MAX_NODES),
            ("[1e2]".to_string(), 64, MAX_NODES),
            (r#"["\/"]"#.to_string(), 64, MAX_NODES),
            ("[1,]".to_string(), 64, MAX_NODES),
            ("[01]".to_string(), 64, MAX_NODES),
            ("tru".to_string(), 64, MAX_NODES),
            ("[1][2]".to_string(), 64, MAX_NODES),
            ("1 ".to_string(), 64, MAX_NODES),
            ("[,1]".to_string(), 64, MAX_NODES),
            ("[1,,2]".to_string(), 64, MAX_NODES),
            (r#"{,"a":1}"#.to_string(), 64, MAX_NODES),
            (r#"{"a":1,}"#.to_string(), 64, MAX_NODES),
            ("[1:2]".to_string(), 64, MAX_NODES),
            (r#"{"a"1}"#.to_string(), 64, MAX_NODES),
            (r#"{"a"}"#.to_string(), 64, MAX_NODES),
            (r#"{"a":1:2}"#.to_string(), 64, MAX_NODES),
            (r#"{"a"::1}"#.to_string(), 64, MAX_NODES),
            ("{1:2}".to_string(), 64, MAX_NODES),
            (r#"["a":1]"#.to_string(), 64, MAX_NODES),
            ("[}".to_string(), 64, MAX_NODES),
            ("{]".to_string(), 64, MAX_NODES),
            ("]".to_string(), 64, MAX_NODES),
            ("[".to_string(), 64, MAX_NODES),
            ("1,2".to_string(), 64, MAX_NODES),
            ("-".to_string(), 64, MAX_NODES),
            ("--1".to_string(), 64, MAX_NODES),
            ("-01".to_string(), 64, MAX_NODES),
            ("1.".to_string(), 64, MAX_NODES),
            ("1.e+2".to_string(), 64, MAX_NODES),
            ("1e+".to_string(), 64, MAX_NODES),
            ("1e+2.5".to_string(), 64, MAX_NODES),
            ("1.5.3".to_string(), 64, MAX_NODES),
            ("1-2".to_string(), 64, MAX_NODES),
            ("truex".to_string(), 64, MAX_NODES),
            ("[nul]".to_string(), 64, MAX_NODES),
            ("[true false]".to_string(), 64, MAX_NODES),
            ("[truefalse]".to_string(), 64, MAX_NODES),
            ("\"a\"\"b\"".to_string(), 64, MAX_NODES),
            ("[\"a\\x\"]".to_string(), 64, MAX_NODES),
            ("[\"a\tb\"]".to_string(), 64, MAX_NODES),
            ("\"unterminated".to_string(), 64, MAX_NODES),
            ("".to_string(), 64, MAX_NODES),
            ("\"\u{1}\"".to_string(), 64, MAX_NODES),
            (deep(4), 3, MAX_NODES),
            (deep(200), 500, MAX_NODES),
            ("[1,2,3]".to_string(), 64, 3),
        ] {
            assert_eq!(canonical(t.as_bytes(), max_depth, max_nodes), None, "{t}");
        }
        assert_eq!(canonical(deep(3).as_bytes(), 3, MAX_NODES), Some(3));
        assert_eq!(canonical(b"[1,2,3]", 64, 4), Some(1));
        assert_eq!(canonical(b"\"\xff\"", 64, MAX_NODES), None);
        // Keys in nested objects are the nested objects' own: `a` may be in both.
        assert_eq!(
            canonical(br#"{"a":{"a":1},"b":{"a":2}}"#, 64, MAX_NODES),
            Some(2)
        );
        // An object with more keys than the check keeps is left to the parser.
        let wide = |n: usize| {
            let m: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", m.join(","))
        };
        assert_eq!(
            canonical(wide(CANONICAL_KEYS).as_bytes(), 64, MAX_NODES),
            Some(1)
        );
        assert_eq!(
            canonical(wide(CANONICAL_KEYS + 1).as_bytes(), 64, MAX_NODES),
            None
        );
    }

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
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a":1,"b":{"c":[[]]},"d":[2]})), 4);
        assert_eq!(depth(&json!([[1, [2, {"x": {}}]], 3])), 5);
    }

    #[test]
    fn stored_text_is_checked_as_the_parser_would() {
        // Whatever `check_stored` accepts, the tree built later parses; whatever the parser
        // refuses, `check_stored` refuses.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let cases: Vec<Vec<u8>> = vec![
            b"1".to_vec(),
            b" {\"a\":[1,2,{\"b\":null}]} ".to_vec(),
            b"\"\\ud83d\\ude00 and \\u00e9\"".to_vec(),
            b"\"\\ud83d\"".to_vec(),
            b"\"\\ude00\"".to_vec(),
            b"\"\\ud83d\\u0041\"".to_vec(),
            b"\"\\ud83dx\"".to_vec(),
            b"[\"\\\\\",\"\\\"[\"]".to_vec(),
            b"\"\xff\"".to_vec(),
            b"\"caf\xc3\xa9\"".to_vec(),
            b"123456789012345678901234567890".to_vec(),
            b"1e999".to_vec(),
            b"[1,]".to_vec(),
            b"1 2".to_vec(),
            b"".to_vec(),
            deep(PARSER_MAX_DEPTH).into_bytes(),
            deep(PARSER_MAX_DEPTH + 1).into_bytes(),
            format!("{{\"a\":{}}}", deep(PARSER_MAX_DEPTH - 1)).into_bytes(),
            format!("{{\"a\":{}}}", deep(PARSER_MAX_DEPTH)).into_bytes(),
            format!("[\"{}\"]", "[".repeat(300)).into_bytes(),
        ];
        for text in cases {
            let parses = serde_json::from_slice::<Value>(&text).is_ok();
            assert_eq!(
                check_stored(&text).is_ok(),
                parses,
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
        assert!(check_stored(deep(PARSER_MAX_DEPTH).as_bytes()).is_ok());
        assert!(check_stored(deep(PARSER_MAX_DEPTH + 1).as_bytes()).is_err());
    }

    #[test]
    fn nodes_are_counted_and_capped() {
        for (text, n) in [
            ("1", 1),
            ("[]", 1),
            ("[{},{}]", 3),
            (r#"{"a":1,"b":[true,false,null],"c":"x:,[{"}"#, 7),
            (r#"["\"[", -1.5e3, {"k\"":{}}]"#, 5),
            (" [ 1 , 2 ] ", 3),
        ] {
            assert_eq!(count_nodes(text.as_bytes(), usize::MAX), n, "{text}");
        }
        // 10 MiB of `{},` would be 3.5 million values: refused before it is parsed.
        let big = format!("[{}{{}}]", "{},".repeat(300_000));
        assert!(matches!(
            parse(big.as_bytes(), 64),
            Err(JsonError::TooManyNodes { max: MAX_NODES })
        ));
        assert!(parse_limited(big.as_bytes(), 64, 400_000).is_ok());
        assert_eq!(
            parse_limited(b"[1,2,3]", 64, 3),
            Err(JsonError::TooManyNodes { max: 3 })
        );
        assert!(parse_limited(b"[1,2]", 64, 3).is_ok());
    }

    #[test]
    #[cfg(feature = "exact-numbers")]
    fn numbers_are_kept_as_written() {
        for n in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "-0",
            "1.0",
            "1.50",
            "1e+400",
            "0.1000000000000000055511151231257827",
        ] {
            let v = parse(n.as_bytes(), 8).unwrap();
            assert_eq!(encode(&v), n.as_bytes(), "{n}");
            let doc = format!(r#"{{"n":{n},"l":[{n}]}}"#);
            let v = parse(doc.as_bytes(), 8).unwrap();
            assert_eq!(encode(&v), doc.as_bytes(), "{doc}");
            // Through every patch kind.
            let merged = ooo_merge(&json!({}), &v).unwrap();
            assert_eq!(
                encode(&merged),
                format!(r#"{{"l":[{n}],"n":{n}}}"#).as_bytes()
            );
            assert_eq!(encode(&merge_patch(&json!({}), &v)), doc.as_bytes());
            let p = parse_patch(
                parse(
                    format!(r#"[{{"op":"add","path":"/x","value":{n}}}]"#).as_bytes(),
                    8,
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(
                encode(&json_patch(&json!({}), &p).unwrap()),
                format!(r#"{{"x":{n}}}"#).as_bytes()
            );
        }
        // An exponent is kept with its sign spelled out (`1E400` reads back as `1e+400`): the
        // digits and the value are the same.
        assert_eq!(encode(&parse(b"1E400", 8).unwrap()), b"1e+400");
        // Integers still read as integers where the server needs one.
        assert_eq!(parse(b"42", 8).unwrap().as_i64(), Some(42));
        assert_eq!(
            parse(b"123456789012345678901234567890", 8)
                .unwrap()
                .as_i64(),
            None
        );
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
