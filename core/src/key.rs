//! Keys and patterns.
//!
//! Owns the key syntax (segments of UTF-8 text joined by `/`: no control characters, no `*`
//! except as a whole glob segment, no empty, `.` or `..` segments, and an ASCII first or last
//! character must be a letter or digit, so `/_...` stays the server's own routes), the `*` glob (one whole segment), AtomKV's HTTP spelling (leading `/`,
//! trailing `/` for a whole subtree) and matching a key against a pattern. It knows nothing about
//! storage or the wire beyond the spelling of a path.

use std::fmt;

/// Longest key accepted, in bytes. Keys travel in URLs, SSE ids and index files; a cap keeps a
/// single request from making every later scan expensive.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a key or pattern was refused. Each case has its own message so a client can fix its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key is {0} bytes long, the limit is {MAX_KEY_LEN}")]
    TooLong(usize),
    /// A control character (U+0000–U+001F, U+007F–U+009F): they cannot travel in SSE ids,
    /// headers or logs unharmed, and no user means one.
    #[error(
        "key contains the control character {0:?} at byte {1}; keys are UTF-8 text without control characters"
    )]
    InvalidChar(char, usize),
    /// A `%` in an HTTP path that is not followed by two hex digits, or escapes that are not UTF-8.
    #[error("path has a malformed percent-escape at byte {0}")]
    BadEscape(usize),
    /// `%2F` in an HTTP path: an encoded `/` would silently change where segments split.
    #[error("path contains an encoded '/' (%2F); use '/' between segments")]
    EncodedSlash,
    /// The first character is ASCII punctuation or whitespace (`_` would reach the server's own
    /// `/_` routes).
    #[error("key must start with a letter, a digit or a non-ASCII character, not {0:?}")]
    BadStart(char),
    /// The last character is ASCII punctuation or whitespace.
    #[error("key must end with a letter, a digit or a non-ASCII character, not {0:?}")]
    BadEnd(char),
    /// Two slashes in a row.
    #[error("key contains an empty segment ('//')")]
    EmptySegment,
    /// A `.` or `..` segment, which HTTP clients rewrite before it reaches the server.
    #[error("key contains a '.' or '..' segment")]
    DotSegment,
    /// `*` mixed with other characters in one segment.
    #[error("'*' must be a whole segment (like 'books/*'), not part of one")]
    PartialGlob,
    /// A glob where a single key is required.
    #[error("glob pattern not allowed for this operation")]
    GlobNotAllowed,
    /// A push to a plain key.
    #[error("push needs a list pattern ending in '/*' (like 'todos/*'); to write one key use set")]
    PushNeedsGlob,
    /// A push pattern with `*` before its end.
    #[error("glob pattern must be at the end of the path")]
    GlobNotLast,
    /// A push pattern with more than one `*`.
    #[error("key contains more than one glob pattern")]
    MultipleGlobs,
    /// A trailing `/` (subtree) where it is not allowed.
    #[error("a trailing '/' (whole subtree) is only allowed for subscriptions")]
    SubtreeNotAllowed,
    /// The HTTP path does not start with `/`.
    #[error("path must start with '/'")]
    NoLeadingSlash,
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// Matches exactly this text.
    Lit(Box<str>),
    /// `*`: matches any one segment.
    Star,
}

/// What a subscription, list, or delete addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// One key.
    Key(Box<str>),
    /// Segments with at least one `*`; matches keys with the same number of segments.
    Glob(Box<str>, Vec<Segment>),
    /// Every key strictly below a prefix (`prefix/...` at any depth); the empty prefix is every key.
    Subtree(Box<str>),
}

// A key's first or last character: an ASCII letter or digit (as ooo's keys), or any non-ASCII
// character that is not whitespace (`名前`, `😀`). ASCII punctuation stays refused there: a
// leading `_` would reach the server's `/_` routes, a trailing `.` or space is a typo.
fn edge_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || (!c.is_ascii() && !c.is_whitespace())
}

// Checks what every key and pattern must be, and counts its `*` segments. Every write checks
// its key (more than once: the route parses it, the engine checks it again), so this is one
// pass over the bytes for the segments, and one for control characters that is byte by byte
// when the key is ASCII, as nearly every key is.
fn check_chars(s: &str) -> Result<usize, KeyError> {
    if s.is_empty() {
        return Err(KeyError::Empty);
    }
    if s.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(s.len()));
    }
    let control = if s.is_ascii() {
        // An ASCII character is a control character exactly when it is below a space or DEL.
        let b = s.as_bytes();
        b.iter()
            .position(|&c| c < 0x20 || c == 0x7f)
            .map(|i| (i, char::from(b[i])))
    } else {
        s.char_indices().find(|(_, c)| c.is_control())
    };
    if let Some((i, c)) = control {
        return Err(KeyError::InvalidChar(c, i));
    }
    let first = s.chars().next().unwrap_or('/');
    if !(edge_char(first) || first == '*') {
        return Err(KeyError::BadStart(first));
    }
    let last = s.chars().next_back().unwrap_or('/');
    if !(edge_char(last) || last == '*') {
        return Err(KeyError::BadEnd(last));
    }
    // `/` and `*` are ASCII: no byte of a multi-byte UTF-8 character is either.
    let mut stars = 0;
    for seg in s.as_bytes().split(|&b| b == b'/') {
        match seg {
            [] => return Err(KeyError::EmptySegment),
            b"." | b".." => return Err(KeyError::DotSegment),
            b"*" => stars += 1,
            _ if seg.contains(&b'*') => return Err(KeyError::PartialGlob),
            _ => {}
        }
    }
    Ok(stars)
}

/// Checks a plain key (no glob).
pub fn validate_key(s: &str) -> Result<(), KeyError> {
    if check_chars(s)? > 0 {
        return Err(KeyError::GlobNotAllowed);
    }
    Ok(())
}

/// Checks a push target `prefix/*` (or a bare `*`) and returns the prefix (`""` for `*`).
pub fn validate_push(s: &str) -> Result<&str, KeyError> {
    let stars = check_chars(s)?;
    if stars > 1 {
        return Err(KeyError::MultipleGlobs);
    }
    if stars == 0 {
        return Err(KeyError::PushNeedsGlob);
    }
    if !(s == "*" || s.ends_with("/*")) {
        return Err(KeyError::GlobNotLast);
    }
    Ok(s.strip_suffix("/*").unwrap_or(""))
}

/// Whether a write's HTTP path (decoded) names a glob (a push target) rather than a key, with
/// every check [`Pattern::from_http_path`] makes without a subtree, but without building the
/// pattern (every `POST` asks).
pub fn http_path_is_glob(path: &str) -> Result<bool, KeyError> {
    Ok(check_chars(write_path(path)?)? > 0)
}

// The key or glob of an HTTP path that may not name a subtree (without its leading `/`).
fn write_path(path: &str) -> Result<&str, KeyError> {
    let rest = path.strip_prefix('/').ok_or(KeyError::NoLeadingSlash)?;
    if rest.is_empty() {
        return Err(KeyError::Empty);
    }
    if rest.ends_with('/') {
        return Err(KeyError::SubtreeNotAllowed);
    }
    Ok(rest)
}

/// Decodes the percent-escapes of an HTTP path (RFC 3986 §2.1), borrowing when there are none.
/// An encoded `/` is refused rather than decoded: it would move a segment boundary.
pub fn decode_http_path(path: &str) -> Result<std::borrow::Cow<'_, str>, KeyError> {
    if !path.contains('%') {
        return Ok(path.into());
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(hi), Some(lo)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) else {
                return Err(KeyError::BadEscape(i));
            };
            let c = (hi * 16 + lo) as u8;
            if c == b'/' {
                return Err(KeyError::EncodedSlash);
            }
            out.push(c);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Into::into)
        .map_err(|e| KeyError::BadEscape(e.utf8_error().valid_up_to()))
}

/// Percent-encodes a key or pattern for an HTTP path (without the leading `/`): every byte but
/// ASCII letters, digits, `_`, `.`, `-`, `~`, `/` and `*` becomes `%XX` (UTF-8 bytes), so
/// [`decode_http_path`] gives the key back. ASCII keys of ooo's alphabet come out unchanged.
pub fn encode_http_path(key: &str) -> std::borrow::Cow<'_, str> {
    let plain =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~' | b'/' | b'*');
    if key.bytes().all(plain) {
        return key.into();
    }
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

/// The last segment of a key: ooo's `index`.
pub fn last_segment(key: &str) -> &str {
    // By bytes: `/` is ASCII, so the split is on a character boundary (and `rsplit`'s
    // searcher costs more than the short keys it splits; every POST's answer names this).
    match key.bytes().rposition(|b| b == b'/') {
        Some(i) => &key[i + 1..],
        None => key,
    }
}

impl Pattern {
    /// Parses a key or a glob (any number of `*` segments).
    pub fn parse(s: &str) -> Result<Pattern, KeyError> {
        if check_chars(s)? == 0 {
            return Ok(Pattern::Key(s.into()));
        }
        let segs = s
            .split('/')
            .map(|seg| {
                if seg == "*" {
                    Segment::Star
                } else {
                    Segment::Lit(seg.into())
                }
            })
            .collect();
        Ok(Pattern::Glob(s.into(), segs))
    }

    /// Parses the path part of an HTTP URL (`/books/*`). A trailing `/` means the whole subtree and
    /// is accepted only when `allow_subtree`; `/` alone is then every key. `path` is decoded
    /// already ([`decode_http_path`], once: decoding twice would turn `%2541` into `A`).
    pub fn from_http_path(path: &str, allow_subtree: bool) -> Result<Pattern, KeyError> {
        if !allow_subtree {
            return Pattern::parse(write_path(path)?);
        }
        let rest = path.strip_prefix('/').ok_or(KeyError::NoLeadingSlash)?;
        if rest.is_empty() || rest.ends_with('/') {
            let prefix = rest.strip_suffix('/').unwrap_or(rest);
            if !prefix.is_empty() {
                validate_key(prefix)?;
            }
            return Ok(Pattern::Subtree(prefix.into()));
        }
        Pattern::parse(rest)
    }

    /// The text of the pattern as a client spells it (subtrees end with `/`).
    pub fn as_str(&self) -> String {
        match self {
            Pattern::Key(k) => k.to_string(),
            Pattern::Glob(s, _) => s.to_string(),
            Pattern::Subtree(p) if p.is_empty() => "/".to_string(),
            Pattern::Subtree(p) => format!("{p}/"),
        }
    }

    /// [`Pattern::as_str`] borrowed where the pattern holds its text as it is (a key, a glob),
    /// so a read that only looks at it (every `GET` checks it against the filters) copies
    /// nothing.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Pattern::Key(k) | Pattern::Glob(k, _) => std::borrow::Cow::Borrowed(k),
            p @ Pattern::Subtree(_) => std::borrow::Cow::Owned(p.as_str()),
        }
    }

    /// Whether the pattern names more than one key (a glob or a subtree).
    pub fn is_multi(&self) -> bool {
        !matches!(self, Pattern::Key(_))
    }

    /// The longest literal prefix every matching key starts with, used to bound scans.
    pub fn scan_prefix(&self) -> &str {
        match self {
            Pattern::Key(k) => k,
            Pattern::Glob(s, _) => match s.find('*') {
                Some(i) => &s[..i],
                None => s,
            },
            Pattern::Subtree(p) => p,
        }
    }

    /// Whether `key` (a plain key) is addressed by this pattern.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Pattern::Key(k) => &**k == key,
            Pattern::Glob(_, segs) => {
                let mut parts = key.split('/');
                for seg in segs {
                    match (seg, parts.next()) {
                        (_, None) => return false,
                        (Segment::Star, Some(_)) => {}
                        (Segment::Lit(l), Some(p)) if &**l == p => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
            Pattern::Subtree(p) => {
                p.is_empty()
                    || (key.len() > p.len()
                        && key.starts_with(&**p)
                        && key.as_bytes()[p.len()] == b'/')
            }
        }
    }

    /// Whether every key matched by `other` is also matched by `self` (used to tell whether a glob
    /// delete empties a list subscription).
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (Pattern::Glob(_, a), Pattern::Glob(_, b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| matches!(x, Segment::Star) || x == y)
            }
            (_, Pattern::Key(k)) => self.matches(k),
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys() {
        for k in [
            "users/john-doe",
            "logs/2026-05-08",
            "data/report.json",
            "550e8400-e29b-41d4-a716-446655440000",
            "a",
            "a/b/c",
            "a/-b/c",
            "A_b",
            "users/alice@example.com",
            "名前",
            "emoji/😀",
            "été",
            "a:b",
            "a b",
            "a%b",
            "a+b?c#d",
            "quote\"and\\back",
            "a/.hidden/b",
        ] {
            assert_eq!(validate_key(k), Ok(()), "{k}");
        }
    }

    #[test]
    fn invalid_keys_each_with_their_reason() {
        let cases: &[(&str, KeyError)] = &[
            ("", KeyError::Empty),
            ("/a/b/c", KeyError::BadStart('/')),
            ("a/b/c/", KeyError::BadEnd('/')),
            ("a\u{0}b", KeyError::InvalidChar('\u{0}', 1)),
            ("a\nb", KeyError::InvalidChar('\n', 1)),
            ("a\u{7f}b", KeyError::InvalidChar('\u{7f}', 1)),
            // A control character is named before any other fault of the key.
            ("x//\u{1}y", KeyError::InvalidChar('\u{1}', 3)),
            ("é/\u{1f}", KeyError::InvalidChar('\u{1f}', 3)),
            ("é\u{85}", KeyError::InvalidChar('\u{85}', 2)),
            ("_ws", KeyError::BadStart('_')),
            (" a", KeyError::BadStart(' ')),
            ("a\u{3000}", KeyError::BadEnd('\u{3000}')),
            ("-leading", KeyError::BadStart('-')),
            ("trailing.", KeyError::BadEnd('.')),
            ("a//b", KeyError::EmptySegment),
            ("a/../b", KeyError::DotSegment),
            ("a/*", KeyError::GlobNotAllowed),
            ("a**", KeyError::PartialGlob),
            ("a/b*", KeyError::PartialGlob),
            ("a/*b", KeyError::PartialGlob),
            ("a/é*", KeyError::PartialGlob),
        ];
        for (k, e) in cases {
            assert_eq!(validate_key(k).as_ref(), Err(e), "{k}");
        }
        assert_eq!(
            validate_key(&"a".repeat(MAX_KEY_LEN + 1)),
            Err(KeyError::TooLong(MAX_KEY_LEN + 1))
        );
    }

    #[test]
    fn push_targets() {
        assert_eq!(validate_push("books/*"), Ok("books"));
        assert_eq!(validate_push("*"), Ok(""));
        assert_eq!(validate_push("a/*/b"), Err(KeyError::GlobNotLast));
        assert_eq!(validate_push("a/*/*"), Err(KeyError::MultipleGlobs));
        assert_eq!(validate_push("a/b"), Err(KeyError::PushNeedsGlob));
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("books/*", "books/1", true),
            ("books/*", "books", false),
            ("books/*", "books/1/2", false),
            ("*", "top", true),
            ("*", "a/b", false),
            ("box/*/things/*", "box/1/things/1", true),
            ("box/*/things/*", "box/1/thing/1", false),
            ("a", "a", true),
            ("a", "ab", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(Pattern::parse(p).unwrap().matches(k), *want, "{p} ~ {k}");
        }
        let s = Pattern::from_http_path("/s/", true).unwrap();
        assert_eq!(s, Pattern::Subtree("s".into()));
        assert!(s.matches("s/k") && s.matches("s/kk/x") && !s.matches("sx") && !s.matches("s"));
        let all = Pattern::from_http_path("/", true).unwrap();
        assert!(all.matches("anything/at/all"));
    }

    #[test]
    fn percent_escapes() {
        // Decoded before the key is checked, so a refusal names the character the client
        // meant, and an escaped allowed character is that character; decoded once only.
        let check = |p: &str| decode_http_path(p).and_then(|d| Pattern::from_http_path(&d, false));
        assert_eq!(check("/caf%C3%A9"), Ok(Pattern::Key("café".into())));
        assert_eq!(
            check("/%E5%90%8D%E5%89%8D"),
            Ok(Pattern::Key("名前".into()))
        );
        assert_eq!(check("/a%0Ab"), Err(KeyError::InvalidChar('\n', 1)));
        assert_eq!(check("/a/%2A"), Ok(Pattern::parse("a/*").unwrap()));
        assert_eq!(check("/a%2Db"), Ok(Pattern::Key("a-b".into())));
        assert_eq!(check("/a%2Fb"), Err(KeyError::EncodedSlash));
        assert_eq!(check("/a%4"), Err(KeyError::BadEscape(2)));
        assert_eq!(check("/a%FF"), Err(KeyError::BadEscape(2)));
        assert_eq!(check("/a%2541"), Ok(Pattern::Key("a%41".into())));
        assert_eq!(decode_http_path("/plain"), Ok("/plain".into()));
        for k in [
            "a/b-c.d_e",
            "users/alice@example.com",
            "名前",
            "e/😀",
            "a%b:c d?e#f\"g",
        ] {
            let enc = encode_http_path(k);
            assert!(enc.is_ascii(), "{enc}");
            assert_eq!(
                decode_http_path(&format!("/{enc}")).unwrap(),
                format!("/{k}")
            );
        }
        assert_eq!(encode_http_path("a/b"), "a/b");
        assert_eq!(encode_http_path("é:"), "%C3%A9%3A");
    }

    #[test]
    fn http_paths() {
        assert_eq!(
            Pattern::from_http_path("/a/", false),
            Err(KeyError::SubtreeNotAllowed)
        );
        assert_eq!(Pattern::from_http_path("/", false), Err(KeyError::Empty));
        assert_eq!(
            Pattern::from_http_path("a", false),
            Err(KeyError::NoLeadingSlash)
        );
        assert_eq!(
            Pattern::from_http_path("//b", true),
            Err(KeyError::BadStart('/'))
        );
        assert_eq!(
            Pattern::from_http_path("/a/b", false),
            Ok(Pattern::Key("a/b".into()))
        );
        assert_eq!(Pattern::parse("a/*").unwrap().scan_prefix(), "a/");
        assert_eq!(Pattern::parse("a/*").unwrap().as_str(), "a/*");
        assert_eq!(Pattern::Subtree("".into()).as_str(), "/");
        // `text` is `as_str`, borrowed where it can be.
        for s in ["a/b", "a/*", "*/x/*", "a/", "/", "名前/😀"] {
            let p =
                Pattern::from_http_path(&format!("/{}", s.trim_start_matches('/')), true).unwrap();
            assert_eq!(p.text(), p.as_str(), "{s}");
            let borrowed = matches!(p.text(), std::borrow::Cow::Borrowed(_));
            assert_eq!(borrowed, !matches!(p, Pattern::Subtree(_)), "{s}");
        }
    }

    #[test]
    fn coverage() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("a/*").covers(&p("a/*")));
        assert!(p("*/*").covers(&p("a/*")));
        assert!(!p("a/*").covers(&p("*/*")));
        assert!(p("a/*").covers(&p("a/b")));
        assert_eq!(last_segment("books/abc"), "abc");
        assert_eq!(last_segment("settings"), "settings");
        assert_eq!(last_segment("café/crème"), "crème");
        assert_eq!(last_segment("a/b/"), "");
        assert_eq!(last_segment("/x"), "x");
    }
}
