//! `GET /<key>?history=N` (a key's last versions) and the remaining TTL a `GET` of a key
//! reports (`X-TTL`, and `ttl` in its meta object).

use super::*;

/// Answers `GET /<key>?history=N`, once the read was authorized as a plain `GET` of the key is
/// (a caller who may not read the key gets what such a read gets).
pub(super) fn read(
    engine: &Engine,
    h: &HeaderMap,
    pattern: &Pattern,
    n: &str,
) -> Result<(Response<Bytes>, Vec<Change>), Error> {
    let Pattern::Key(k) = pattern else {
        return Err(Error::BadRequest(
            "history is read one key at a time, not for a glob or a subtree".into(),
        ));
    };
    let keep = engine.history().limits().keep;
    if keep == 0 {
        return Err(Error::BadRequest(
            "key history is turned off on this server (stateline serve --history 0)".into(),
        ));
    }
    let n: usize = match n.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(Error::BadRequest(format!(
                "invalid history {n:?}: a number of versions from 1 to {keep} expected"
            )))
        }
    };
    if n > keep {
        return Err(Error::BadRequest(format!(
            "history={n} is over this server's limit of {keep} versions per key (stateline serve --history)"
        )));
    }
    if engine.filters().has_read_filters(k) {
        // A read filter rewrites what a read shows; its earlier values are not ours to show.
        return Err(Error::BadRequest(format!(
            "history is not served for {k}: a read filter applies to it"
        )));
    }
    let history = engine.history();
    let current = engine.store().get(k);
    if current.is_none() && history.versions(k, 1).is_empty() {
        return Err(Error::NotFound);
    }
    let body = history.json(k, current, n);
    let mut r = respond(engine, h, StatusCode::OK, Some(JSON), body.into());
    read_headers(&mut r, engine.store().last_seq());
    Ok((r, Vec::new()))
}

/// Seconds with millisecond precision, rounded up (a key that is still there never reads 0).
pub fn ttl_seconds(ns: i64) -> String {
    let ms = (ns.max(1) + 999_999) / 1_000_000;
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
            .trim_end_matches('0')
            .to_string()
    }
}

/// A `GET` of a key with a TTL: `X-TTL: <seconds left>` and `"ttl":<seconds left>` as the meta
/// object's last field.
pub(super) fn add_ttl(engine: &Engine, tick: Tick, pattern: &Pattern, r: &mut Response<Bytes>) {
    let Pattern::Key(k) = pattern else {
        return;
    };
    let Some(left) = engine.store().get(k).and_then(|e| engine.ttl_left(tick, e)) else {
        return;
    };
    let secs = ttl_seconds(left);
    if let Ok(v) = HeaderValue::from_str(&secs) {
        r.headers_mut().insert("x-ttl", v);
    }
    if r.status() == StatusCode::OK && r.body().last() == Some(&b'}') {
        let body = r.body();
        let mut out = Vec::with_capacity(body.len() + 16);
        out.extend_from_slice(&body[..body.len() - 1]);
        out.extend_from_slice(b",\"ttl\":");
        out.extend_from_slice(secs.as_bytes());
        out.push(b'}');
        *r.body_mut() = out.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_seconds_with_ms_rounded_up() {
        assert_eq!(ttl_seconds(30_000_000_000), "30");
        assert_eq!(ttl_seconds(29_874_000_001), "29.875");
        assert_eq!(ttl_seconds(1), "0.001");
        assert_eq!(ttl_seconds(1_500_000_000), "1.5");
    }
}
