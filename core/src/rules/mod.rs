//! Declarative access rules: who may read, write and delete which keys, what written values must
//! look like, and per-pattern limits and TTLs — loaded from a TOML or JSON rules file.
//!
//! Owns the rules file's format, its validation at load (a conflict is an error there, never a
//! silent first match), the precedence between patterns, the verdict for one caller on one key,
//! and the *audience* of a subscription: the part of a caller's identity that decides what a
//! pattern lets it see, so pools are shared only between callers who see the same keys. It reads
//! no file and no environment variable: the adapter passes a [`Resolve`] for `*_file` and
//! `*_env` entries, and the current time arrives with each token to verify.
//!
//! Precedence: for a key, the **most specific** matching rule decides, alone. Patterns are
//! compared segment by segment from the left: a literal beats `*`/`{claim}`, which beat `**`, and
//! a pattern that ends exactly at the key beats one that goes on with `**`. Two rules that can
//! match the same key with the same specificity (`a/*` and `a/{sub}`, or the same pattern
//! twice) are refused at load. A key no rule matches can be read, written and deleted by nobody.
//!
//! The compiled [`Rules`] are installed in the engine's filters
//! ([`Filters::set_rules`](crate::filter::Filters::set_rules)), beside the filters they register
//! for their limits; the engine reads them back with [`Engine::rules`](crate::Engine::rules).
//!
//! Files: `file` (the rules file and compiling it), `pattern` ([`RulePattern`]), `schema`,
//! `identity` ([`Identity`], [`Audience`]), `decide` (which rule decides, the verdicts,
//! audiences), `tokens` (verifying and minting).

use serde_json::Value;

use crate::filter::Limit;
use crate::token::Verifier;

mod decide;
mod file;
mod identity;
mod pattern;
mod schema;
#[cfg(test)]
mod tests;
mod tokens;

pub use decide::Denied;
pub use file::{Inline, Resolve, RulesError};
use identity::Principal;
pub use identity::{Audience, Identity};
use pattern::same_shape;
pub use pattern::{RulePattern, RulePatternError};
pub use schema::{Schema, SchemaError};

/// What is being done to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET`, lists, subscriptions, replay.
    Read,
    /// Every kind of write (set, push, patch, counters, rename target).
    Write,
    /// Deletes (explicit, glob, take, rename source).
    Delete,
}

impl Action {
    /// The word used in rules files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One way to be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Anyone, with or without a token.
    Public,
    /// Any valid token.
    Token,
    /// A valid token whose claims equal every `{claim}` segment of the rule's pattern.
    Owner,
    /// A valid token whose roles claim contains this role.
    Role(String),
}

impl Grant {
    fn parse(s: &str) -> Result<Option<Grant>, String> {
        Ok(Some(match s.trim() {
            "public" => Grant::Public,
            "token" => Grant::Token,
            "owner" => Grant::Owner,
            "none" => return Ok(None),
            r if r.starts_with("role:") && r.len() > 5 => Grant::Role(r[5..].to_string()),
            other => {
                return Err(format!(
                    "unknown grant {other:?}; use public, token, owner, role:<name> or none"
                ))
            }
        }))
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The pattern.
    pub pattern: RulePattern,
    read: Vec<Grant>,
    write: Vec<Grant>,
    delete: Vec<Grant>,
    /// Written values must validate.
    pub schema: Option<Schema>,
    /// Count and age limit (registered as a core limit filter).
    pub limit: Option<Limit>,
    /// TTL (ns) given to writes that set none.
    pub ttl_ns: Option<i64>,
    /// Nobody writes or deletes.
    pub read_only: bool,
}

impl Rule {
    fn grants(&self, a: Action) -> &[Grant] {
        match a {
            Action::Read => &self.read,
            Action::Write if self.read_only => &[],
            Action::Delete if self.read_only => &[],
            Action::Write => &self.write,
            Action::Delete => &self.delete,
        }
    }
}

/// The compiled rules and the token verifier. See the module docs.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    verifier: Verifier,
    roles_claim: String,
}

impl Rules {
    /// How many rules the file has (the start-up log says it; zero closes every key).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the file has no rule at all (then no key is open to anyone).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The compiled rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule's limits, as `(glob, limit)` for the core's limit filter.
    pub fn limits(&self) -> Vec<(String, Limit)> {
        self.rules
            .iter()
            .filter_map(|r| Some((r.pattern.as_glob()?, r.limit?)))
            .collect()
    }

    /// `(pattern, summary)` of each rule, for `/?api=filters`.
    pub fn describe(&self) -> Vec<Value> {
        let g = |gs: &[Grant]| -> Vec<String> {
            gs.iter()
                .map(|g| match g {
                    Grant::Public => "public".into(),
                    Grant::Token => "token".into(),
                    Grant::Owner => "owner".into(),
                    Grant::Role(r) => format!("role:{r}"),
                })
                .collect()
        };
        self.rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "pattern": r.pattern.as_str(),
                    "read": g(r.grants(Action::Read)),
                    "write": g(r.grants(Action::Write)),
                    "delete": g(r.grants(Action::Delete)),
                    "schema": r.schema.is_some(),
                    "readOnly": r.read_only,
                    "ttlSecs": r.ttl_ns.map(|n| n as f64 / 1e9),
                    "limit": r.limit.map(|l| serde_json::json!({"count": l.count, "maxAgeSecs": l.max_age_ns.map(|n| n as f64 / 1e9)})),
                })
            })
            .collect()
    }
}
