//! `/_metrics`: the engine's counters as Prometheus text, after the adapter's own.

use super::*;

/// The engine's counters in Prometheus text format (the adapter adds its own: requests,
/// connections).
pub fn metrics(engine: &Engine) -> String {
    use std::fmt::Write;
    let st = engine.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "stateline_writes_total",
        "counter",
        "Operations applied (writes of every kind).",
        &[(String::new(), st.writes)],
    );
    metric(
        "stateline_refused_total",
        "counter",
        "Operations refused (any reason).",
        &[(String::new(), st.refused)],
    );
    let denied: Vec<(String, u64)> = st
        .denied
        .by_reason()
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n))
        .collect();
    metric(
        "stateline_denied_total",
        "counter",
        "Attempts refused by the access rules, by reason.",
        &denied,
    );
    metric(
        "stateline_subscriptions",
        "gauge",
        "Subscribers over all pools.",
        &[(String::new(), engine.pools().subscribers() as u64)],
    );
    metric(
        "stateline_pools",
        "gauge",
        "Subscription pools (one per pattern, encoding and audience).",
        &[(String::new(), engine.pools().len() as u64)],
    );
    let (resumed, snapshots) = engine.pools().resumes();
    metric(
        "stateline_resumes_total",
        "counter",
        "Subscriptions that gave a version to resume from, by what they got first: only what changed since, or a snapshot (the change log no longer reached back, or the changes were longer than the view).",
        &[
            ("{first=\"changes\"}".into(), resumed),
            ("{first=\"snapshot\"}".into(), snapshots),
        ],
    );
    metric(
        "stateline_keys",
        "gauge",
        "Keys stored.",
        &[(String::new(), engine.store().len() as u64)],
    );
    metric(
        "stateline_frames_total",
        "counter",
        "Frames produced for pools (each sent to every subscriber of its pool).",
        &[(String::new(), st.frames)],
    );
    metric(
        "stateline_expired_total",
        "counter",
        "Keys expired by TTL.",
        &[(String::new(), st.expired)],
    );
    metric(
        "stateline_writes_repeated_total",
        "counter",
        "Writes answered from their id's receipt instead of applied again (a client's retry).",
        &[(String::new(), st.repeats)],
    );
    metric(
        "stateline_receipts",
        "gauge",
        "Ids of idempotent writes remembered (--receipts).",
        &[(String::new(), engine.receipts().len() as u64)],
    );
    out
}

/// `/_metrics`: the adapter's own counters first, then the engine's, as Prometheus text.
pub(super) fn metrics_response(
    engine: &Engine,
    req: &HeaderMap,
    extra: &[Metric<'_>],
) -> Response<Bytes> {
    use std::fmt::Write;
    let mut out = String::new();
    for m in extra {
        let _ = writeln!(
            out,
            "# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}",
            m.name, m.help, m.kind, m.value
        );
    }
    out.push_str(&metrics(engine));
    respond_with(
        engine,
        req,
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out.into(),
    )
}
