//! Filters: per-pattern hooks that validate, transform, authorise and limit (ooo §1.8), and the
//! access rules that go with them.
//!
//! Owns the registry of filters and how they compose. Unlike ooo, where the first matching
//! filter wins and a later one is silently ignored, every matching filter applies, in
//! registration order: write filters chain their transformations, read filters chain theirs, any
//! delete filter can refuse. Two limits on overlapping patterns are refused at registration. In
//! static mode an operation needs a matching filter of its kind (or an open filter). Filters are
//! plain functions: they must not do IO, so the same registry runs at the edge and in tests.
//!
//! [`Filters`] also carries the declarative access rules ([`Rules`], `--rules`), installed with
//! [`Filters::set_rules`]: a rule's limit is registered here as a limit filter, and every pool
//! asks [`Filters::visible`] which keys its audience may see, so the one value the engine hands
//! to its pools holds both. The engine checks the rules ([`Filters::rules`], also
//! [`Engine::rules`](crate::Engine::rules)) before any filter runs.

use std::sync::Arc;

use serde_json::Value;

use crate::key::{KeyError, Pattern};
use crate::rules::{Audience, Rules};

/// Validates or rewrites a value about to be written (ooo `WriteFilter`).
pub type WriteFn = Arc<dyn Fn(&str, Value) -> Result<Value, String> + Send + Sync>;
/// Told after a write or delete was applied (ooo `AfterWriteOp`).
pub type AfterWriteFn = Arc<dyn Fn(&str, WriteOp) + Send + Sync>;
/// Rewrites or refuses a meta object on its way to a reader (ooo `ReadObjectFilter`).
pub type ReadObjectFn = Arc<dyn Fn(&str, Value) -> Result<Value, String> + Send + Sync>;
/// Rewrites or refuses a list of meta objects (ooo `ReadListFilter`).
pub type ReadListFn = Arc<dyn Fn(&str, Vec<Value>) -> Result<Vec<Value>, String> + Send + Sync>;
/// Allows or refuses a delete (ooo `DeleteFilter`).
pub type DeleteFn = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What an after-write hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// A set (create, update, patch, push, counter).
    Set,
    /// A delete (explicit, glob, expiry, take, rename source, limit).
    Delete,
}

/// ooo's LimitFilter: keep at most `count` items under a glob, and none older than `max_age_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    /// Keep at most this many items (the newest).
    pub count: Option<usize>,
    /// Items expire this many ns after they were created.
    pub max_age_ns: Option<i64>,
}

/// Why registering a filter failed, or why a filter refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter's pattern is not a valid key or glob.
    #[error("filter pattern: {0}")]
    Pattern(#[from] KeyError),
    /// A limit must be on a glob (`logs/*`) and set a count or an age.
    #[error("limit filter needs a glob pattern and a count or a max age: {0}")]
    BadLimit(String),
    /// A second limit on a pattern that overlaps one already registered.
    #[error("limit on {new} conflicts with the limit on {existing}")]
    Conflict {
        /// Pattern being registered.
        new: String,
        /// Pattern already registered.
        existing: String,
    },
    /// A filter refused the operation with this message.
    #[error("{0}")]
    Refused(String),
    /// Static mode and no filter allows this operation (ooo's text).
    #[error("filters: route not defined, key:{0}")]
    RouteNotDefined(String),
    /// A write filter returned something that is not a usable value (ooo's text).
    #[error("filters: invalid filter result error, key:{0}")]
    InvalidResult(String),
}

#[derive(Clone)]
enum Kind {
    Write(WriteFn),
    AfterWrite(AfterWriteFn),
    ReadObject(ReadObjectFn),
    ReadList(ReadListFn),
    Delete(DeleteFn),
    Open,
    Limit(Limit),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Write(_) => "write",
            Kind::AfterWrite(_) => "after-write",
            Kind::ReadObject(_) => "read-object",
            Kind::ReadList(_) => "read-list",
            Kind::Delete(_) => "delete",
            Kind::Open => "open",
            Kind::Limit(_) => "limit",
        }
    }
}

// One registered filter.
#[derive(Clone)]
struct Filter {
    pattern: Pattern,
    kind: Kind,
}

/// Operations static mode asks a filter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Writes (set, push, patch, counters, rename target).
    Write,
    /// Reads (GET, subscriptions).
    Read,
    /// Deletes.
    Delete,
}

/// The registry of filters, and the access rules if any. See the module docs.
#[derive(Clone, Default)]
pub struct Filters {
    // In registration order.
    filters: Vec<Filter>,
    static_mode: bool,
    // Declarative access rules (`--rules`): checked by the engine before any filter runs, and
    // consulted by pools for what each audience may see.
    rules: Option<Arc<Rules>>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("static_mode", &self.static_mode)
            .field("filters", &self.describe())
            .field("rules", &self.rules.as_deref().map(Rules::len))
            .finish()
    }
}

impl Filters {
    /// No filters, static mode off.
    pub fn new() -> Filters {
        Filters::default()
    }

    /// Static mode: operations without a matching filter are refused.
    pub fn set_static(&mut self, on: bool) {
        self.static_mode = on;
    }

    /// Whether static mode is on.
    pub fn is_static(&self) -> bool {
        self.static_mode
    }

    /// Installs declarative access rules; their limits become limit filters (a limit that
    /// overlaps one already registered is refused, as for [`Filters::limit`]).
    pub fn set_rules(&mut self, rules: Rules) -> Result<(), FilterError> {
        for (glob, l) in rules.limits() {
            self.limit(&glob, l)?;
        }
        self.rules = Some(Arc::new(rules));
        Ok(())
    }

    /// The access rules, if any.
    pub fn rules(&self) -> Option<&Rules> {
        self.rules.as_deref()
    }

    /// Whether a pool of this audience may show `key` (always, without rules).
    pub fn visible(&self, key: &str, aud: &Audience) -> bool {
        match &self.rules {
            None => true,
            Some(r) => r.visible(key, aud),
        }
    }

    fn add(&mut self, pattern: &str, kind: Kind) -> Result<(), FilterError> {
        let pattern = Pattern::parse(pattern)?;
        self.filters.push(Filter { pattern, kind });
        Ok(())
    }

    /// Adds a write filter.
    pub fn write(&mut self, pattern: &str, f: WriteFn) -> Result<(), FilterError> {
        self.add(pattern, Kind::Write(f))
    }
    /// Adds an after-write hook.
    pub fn after_write(&mut self, pattern: &str, f: AfterWriteFn) -> Result<(), FilterError> {
        self.add(pattern, Kind::AfterWrite(f))
    }
    /// Adds a read filter for single objects.
    pub fn read_object(&mut self, pattern: &str, f: ReadObjectFn) -> Result<(), FilterError> {
        self.add(pattern, Kind::ReadObject(f))
    }
    /// Adds a read filter for lists (the pattern is the glob being read).
    pub fn read_list(&mut self, pattern: &str, f: ReadListFn) -> Result<(), FilterError> {
        self.add(pattern, Kind::ReadList(f))
    }
    /// Adds a delete filter.
    pub fn delete(&mut self, pattern: &str, f: DeleteFn) -> Result<(), FilterError> {
        self.add(pattern, Kind::Delete(f))
    }
    /// Opens a pattern for every operation in static mode.
    pub fn open(&mut self, pattern: &str) -> Result<(), FilterError> {
        self.add(pattern, Kind::Open)
    }
    /// Adds a limit. The pattern must be a glob, and must not overlap another limit's.
    pub fn limit(&mut self, pattern: &str, limit: Limit) -> Result<(), FilterError> {
        let p = Pattern::parse(pattern)?;
        if !matches!(p, Pattern::Glob(..)) || (limit.count.is_none() && limit.max_age_ns.is_none())
        {
            return Err(FilterError::BadLimit(pattern.to_string()));
        }
        for filter in &self.filters {
            if let Kind::Limit(_) = filter.kind {
                if filter.pattern.covers(&p)
                    || p.covers(&filter.pattern)
                    || overlaps(&filter.pattern, &p)
                {
                    return Err(FilterError::Conflict {
                        new: pattern.to_string(),
                        existing: filter.pattern.as_str(),
                    });
                }
            }
        }
        self.add(pattern, Kind::Limit(limit))
    }

    fn matching<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a Filter> + 'a {
        self.filters
            .iter()
            .filter(move |filter| filter.pattern.matches(target))
    }

    /// Static-mode check for `target` (a key, or the glob being read, written or deleted).
    pub fn check(&self, need: Need, target: &str) -> Result<(), FilterError> {
        if !self.static_mode {
            return Ok(());
        }
        let ok = self.matching(target).any(|filter| {
            matches!(
                (need, &filter.kind),
                (_, Kind::Open)
                    | (_, Kind::Limit(_))
                    | (Need::Write, Kind::Write(_))
                    | (Need::Read, Kind::ReadObject(_) | Kind::ReadList(_))
                    | (Need::Delete, Kind::Delete(_))
            )
        }) || (need == Need::Read && self.list_fallback(target));
        if ok {
            Ok(())
        } else {
            Err(FilterError::RouteNotDefined(target.to_string()))
        }
    }

    // ooo's CheckWithListFallback: a list filter on `logs/*` also authorises reading `logs/1`.
    fn list_fallback(&self, key: &str) -> bool {
        self.filters
            .iter()
            .any(|filter| matches!(filter.kind, Kind::ReadList(_)) && filter.pattern.matches(key))
    }

    /// Runs every matching write filter in order; `target` is the key, or the glob for a push.
    pub fn apply_write(&self, target: &str, mut v: Value) -> Result<Value, FilterError> {
        for filter in self.matching(target) {
            if let Kind::Write(f) = &filter.kind {
                v = f(target, v).map_err(FilterError::Refused)?;
            }
        }
        Ok(v)
    }

    /// Whether any write filter matches `target` (when none does, a value is written as given).
    pub fn has_write_filters(&self, target: &str) -> bool {
        self.matching(target)
            .any(|filter| matches!(filter.kind, Kind::Write(_)))
    }

    /// Asks every matching delete filter.
    pub fn check_delete(&self, target: &str) -> Result<(), FilterError> {
        for filter in self.matching(target) {
            if let Kind::Delete(f) = &filter.kind {
                f(target).map_err(FilterError::Refused)?;
            }
        }
        Ok(())
    }

    /// Tells every matching after-write hook.
    pub fn notify_write(&self, key: &str, op: WriteOp) {
        for filter in self.matching(key) {
            if let Kind::AfterWrite(f) = &filter.kind {
                f(key, op);
            }
        }
    }

    /// Whether reads of `target` go through any read filter (pools then compare filtered views).
    pub fn has_read_filters(&self, target: &str) -> bool {
        self.matching(target)
            .any(|filter| matches!(filter.kind, Kind::ReadObject(_) | Kind::ReadList(_)))
    }

    /// Runs the object read filters over a meta object.
    pub fn read_object_value(&self, key: &str, mut meta: Value) -> Result<Value, FilterError> {
        for filter in self.matching(key) {
            if let Kind::ReadObject(f) = &filter.kind {
                meta = f(key, meta).map_err(FilterError::Refused)?;
            }
        }
        Ok(meta)
    }

    /// Runs the list read filters registered for the glob `pattern` over its meta objects.
    pub fn read_list_values(
        &self,
        pattern: &str,
        mut list: Vec<Value>,
    ) -> Result<Vec<Value>, FilterError> {
        for filter in self.matching(pattern) {
            if let Kind::ReadList(f) = &filter.kind {
                list = f(pattern, list).map_err(FilterError::Refused)?;
            }
        }
        Ok(list)
    }

    /// The limit that applies to writes of `key`, with its pattern.
    pub fn limit_for(&self, key: &str) -> Option<(&Pattern, Limit)> {
        self.filters.iter().find_map(|filter| match filter.kind {
            Kind::Limit(l) if filter.pattern.matches(key) => Some((&filter.pattern, l)),
            _ => None,
        })
    }

    /// `(pattern, kind)` of every filter, for `/?api=filters`.
    pub fn describe(&self) -> Vec<(String, &'static str)> {
        self.filters
            .iter()
            .map(|filter| (filter.pattern.as_str(), filter.kind.name()))
            .collect()
    }
}

// Two globs of equal length overlap when each position is a star on one side or equal.
fn overlaps(a: &Pattern, b: &Pattern) -> bool {
    use crate::key::Segment::*;
    match (a, b) {
        (Pattern::Glob(_, x), Pattern::Glob(_, y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| matches!((p, q), (Star, _) | (_, Star)) || p == q)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_compose_in_order() {
        let mut f = Filters::new();
        f.open("books/*").unwrap();
        f.write(
            "books/*",
            Arc::new(|_, v: Value| {
                if v.get("t").is_some() {
                    Ok(v)
                } else {
                    Err("t required".into())
                }
            }),
        )
        .unwrap();
        f.write(
            "books/*",
            Arc::new(|_, mut v: Value| {
                v["seen"] = json!(true);
                Ok(v)
            }),
        )
        .unwrap();
        // ooo would stop at the open filter; here validation still runs.
        assert_eq!(
            f.apply_write("books/1", json!({})),
            Err(FilterError::Refused("t required".into()))
        );
        assert_eq!(
            f.apply_write("books/1", json!({"t":1})),
            Ok(json!({"t":1,"seen":true}))
        );
        assert_eq!(f.apply_write("other", json!(1)), Ok(json!(1)));
    }

    #[test]
    fn static_mode() {
        let mut f = Filters::new();
        f.set_static(true);
        f.open("things/*").unwrap();
        f.read_list("logs/*", Arc::new(|_, l| Ok(l))).unwrap();
        assert!(f.check(Need::Write, "things/*").is_ok());
        assert!(f.check(Need::Read, "things/1").is_ok());
        assert_eq!(
            f.check(Need::Write, "other"),
            Err(FilterError::RouteNotDefined("other".into()))
        );
        assert!(
            f.check(Need::Read, "logs/1").is_ok(),
            "list filter authorises items"
        );
        assert!(f.check(Need::Write, "logs/1").is_err());
        f.set_static(false);
        assert!(f.check(Need::Write, "other").is_ok());
    }

    #[test]
    fn limits_are_checked_at_registration() {
        let mut f = Filters::new();
        f.limit(
            "logs/*",
            Limit {
                count: Some(3),
                max_age_ns: None,
            },
        )
        .unwrap();
        assert!(matches!(
            f.limit(
                "logs/*",
                Limit {
                    count: Some(1),
                    max_age_ns: None
                }
            ),
            Err(FilterError::Conflict { .. })
        ));
        assert!(matches!(
            f.limit(
                "*/*",
                Limit {
                    count: Some(1),
                    max_age_ns: None
                }
            ),
            Err(FilterError::Conflict { .. })
        ));
        assert!(matches!(
            f.limit(
                "x",
                Limit {
                    count: Some(1),
                    max_age_ns: None
                }
            ),
            Err(FilterError::BadLimit(_))
        ));
        assert!(matches!(
            f.limit("y/*", Limit::default()),
            Err(FilterError::BadLimit(_))
        ));
        assert!(f
            .limit(
                "other/*",
                Limit {
                    count: None,
                    max_age_ns: Some(5)
                }
            )
            .is_ok());
        assert_eq!(f.limit_for("logs/9").map(|(_, l)| l.count), Some(Some(3)));
    }

    #[test]
    fn read_and_delete_filters() {
        let mut f = Filters::new();
        f.read_object(
            "secret/*",
            Arc::new(|_, mut m: Value| {
                m["data"] = json!("hidden");
                Ok(m)
            }),
        )
        .unwrap();
        f.delete("keep/*", Arc::new(|_| Err("cannot delete".into())))
            .unwrap();
        assert!(f.has_read_filters("secret/1"));
        assert_eq!(
            f.read_object_value("secret/1", json!({"data":1})).unwrap(),
            json!({"data":"hidden"})
        );
        assert!(f.check_delete("keep/1").is_err());
        assert!(f.check_delete("other").is_ok());
        assert_eq!(
            f.describe(),
            vec![
                ("secret/*".to_string(), "read-object"),
                ("keep/*".to_string(), "delete")
            ]
        );
    }
}
