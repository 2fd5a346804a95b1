//! The rules file: its TOML and JSON forms, the `[auth]` section, and compiling each rule.

use serde::Deserialize;
use serde_json::Value;

use super::{same_shape, Action, Grant, Rule, RulePattern, Rules, Schema};
use crate::filter::Limit;
use crate::token::Verifier;

/// Where `*_file` and `*_env` entries of a rules file are read from (the adapter's business).
pub trait Resolve {
    /// An environment variable.
    fn env(&self, name: &str) -> Option<String>;
    /// A file's text (a path relative to the rules file, as the adapter sees fit).
    fn file(&self, path: &str) -> Result<String, String>;
}

/// A resolver that has no environment and no files (rules given entirely inline).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inline;

impl Resolve for Inline {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn file(&self, path: &str) -> Result<String, String> {
        Err(format!("{path}: files cannot be read here"))
    }
}

/// A rules file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Not valid TOML/JSON, or unknown fields.
    #[error("rules file: {0}")]
    Parse(String),
    /// The `[auth]` section is unusable.
    #[error("rules [auth]: {0}")]
    Auth(String),
    /// One rule is unusable.
    #[error("rule {pattern:?}: {detail}")]
    Rule {
        /// Its pattern.
        pattern: String,
        /// Why.
        detail: String,
    },
    /// Two rules can match the same key with the same specificity.
    #[error("rules {a:?} and {b:?} match the same keys with the same specificity; merge them into one rule")]
    Conflict {
        /// The first.
        a: String,
        /// The second.
        b: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSpec {
    hs256_secret_env: Option<String>,
    hs256_secret: Option<String>,
    rs256_public_key: Option<String>,
    rs256_public_key_file: Option<String>,
    es256_public_key: Option<String>,
    es256_public_key_file: Option<String>,
    leeway_secs: Option<i64>,
    require_exp: Option<bool>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    count: Option<usize>,
    max_age_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    pattern: String,
    read: Option<OneOrMany>,
    write: Option<OneOrMany>,
    delete: Option<OneOrMany>,
    schema: Option<Value>,
    schema_file: Option<String>,
    limit: Option<LimitSpec>,
    ttl_secs: Option<f64>,
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    auth: AuthSpec,
    #[serde(default, alias = "rules")]
    rule: Vec<RuleSpec>,
}

fn secs_to_ns(s: f64, what: &str) -> Result<i64, String> {
    if s.is_finite() && s > 0.0 && s < 1e9 {
        Ok((s * 1e9) as i64)
    } else {
        Err(format!(
            "{what} must be more than 0 and less than 1e9 seconds"
        ))
    }
}

impl Rules {
    /// Parses a TOML rules file.
    pub fn from_toml_str(text: &str, env: &dyn Resolve) -> Result<Rules, RulesError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        Rules::build(spec, env)
    }

    /// Parses a JSON rules file (same fields as the TOML form; `rules` or `rule` for the list).
    pub fn from_json_str(text: &str, env: &dyn Resolve) -> Result<Rules, RulesError> {
        let spec: FileSpec =
            serde_json::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        Rules::build(spec, env)
    }

    fn build(spec: FileSpec, env: &dyn Resolve) -> Result<Rules, RulesError> {
        let a = spec.auth;
        let auth = |e: String| RulesError::Auth(e);
        let mut v = Verifier::new();
        if let Some(l) = a.leeway_secs {
            if !(0..=3600).contains(&l) {
                return Err(auth("leeway_secs must be from 0 to 3600".into()));
            }
            v.leeway_secs = l;
        }
        if let Some(r) = a.require_exp {
            v.require_exp = r;
        }
        v.issuer = a.issuer;
        v.audience = a.audience;
        let secret = match (a.hs256_secret, a.hs256_secret_env) {
            (Some(_), Some(_)) => {
                return Err(auth(
                    "give hs256_secret or hs256_secret_env, not both".into(),
                ))
            }
            (Some(s), None) => Some(s),
            (None, Some(name)) => {
                Some(env.env(&name).filter(|s| !s.is_empty()).ok_or_else(|| {
                    auth(format!(
                        "environment variable {name} (hs256_secret_env) is not set"
                    ))
                })?)
            }
            (None, None) => None,
        };
        if let Some(s) = secret {
            v = v.hs256(s.as_bytes()).map_err(|e| auth(e.to_string()))?;
        }
        let pem = |inline: Option<String>, file: Option<String>, what: &str| match (inline, file) {
            (Some(_), Some(_)) => Err(auth(format!("give {what} or {what}_file, not both"))),
            (Some(p), None) => Ok(Some(p)),
            (None, Some(f)) => env.file(&f).map(Some).map_err(auth),
            (None, None) => Ok(None),
        };
        if let Some(p) = pem(
            a.rs256_public_key,
            a.rs256_public_key_file,
            "rs256_public_key",
        )? {
            v = v.rs256_pem(&p).map_err(|e| auth(e.to_string()))?;
        }
        if let Some(p) = pem(
            a.es256_public_key,
            a.es256_public_key_file,
            "es256_public_key",
        )? {
            v = v.es256_pem(&p).map_err(|e| auth(e.to_string()))?;
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(spec.rule.len());
        for r in spec.rule {
            let bad = |detail: String| RulesError::Rule {
                pattern: r.pattern.clone(),
                detail,
            };
            let pattern = RulePattern::parse(&r.pattern).map_err(|e| bad(e.to_string()))?;
            let grants = |g: &Option<OneOrMany>, what: &str| -> Result<Vec<Grant>, RulesError> {
                let list = match g {
                    None => return Ok(Vec::new()),
                    Some(OneOrMany::One(s)) => vec![s.as_str()],
                    Some(OneOrMany::Many(v)) => v.iter().map(String::as_str).collect(),
                };
                let mut out = Vec::new();
                for s in list {
                    if let Some(g) = Grant::parse(s).map_err(|e| bad(format!("{what}: {e}")))? {
                        if g == Grant::Owner && pattern.capture_names().next().is_none() {
                            return Err(bad(format!(
                                "{what}: owner needs a {{claim}} segment in the pattern"
                            )));
                        }
                        out.push(g);
                    }
                }
                Ok(out)
            };
            let read = grants(&r.read, "read")?;
            let write = grants(&r.write, "write")?;
            let delete = grants(&r.delete, "delete")?;
            if r.read_only && !(write.is_empty() && delete.is_empty()) {
                return Err(bad("read_only rules cannot grant write or delete".into()));
            }
            let schema = match (r.schema.clone(), &r.schema_file) {
                (Some(_), Some(_)) => {
                    return Err(bad("give schema or schema_file, not both".into()))
                }
                (Some(s), None) => Some(Schema::new(s).map_err(|e| bad(e.to_string()))?),
                (None, Some(f)) => {
                    let text = env.file(f).map_err(bad)?;
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| bad(format!("schema_file {f}: {e}")))?;
                    Some(Schema::new(v).map_err(|e| bad(e.to_string()))?)
                }
                (None, None) => None,
            };
            let limit = match &r.limit {
                None => None,
                Some(l) => {
                    if pattern.as_glob().is_none() {
                        return Err(bad("a limit needs a pattern without **".into()));
                    }
                    let max_age_ns = l
                        .max_age_secs
                        .map(|s| secs_to_ns(s, "limit.max_age_secs"))
                        .transpose()
                        .map_err(bad)?;
                    if l.count.is_none() && max_age_ns.is_none() {
                        return Err(bad("a limit needs count or max_age_secs".into()));
                    }
                    Some(Limit {
                        count: l.count,
                        max_age_ns,
                    })
                }
            };
            let ttl_ns = r
                .ttl_secs
                .map(|s| secs_to_ns(s, "ttl_secs"))
                .transpose()
                .map_err(bad)?;
            let rule = Rule {
                pattern,
                read,
                write,
                delete,
                schema,
                limit,
                ttl_ns,
                read_only: r.read_only,
            };
            for other in &rules {
                if same_shape(&other.pattern, &rule.pattern) {
                    return Err(RulesError::Conflict {
                        a: other.pattern.text.clone(),
                        b: rule.pattern.text.clone(),
                    });
                }
            }
            rules.push(rule);
        }
        let needs_token = rules.iter().any(|r| {
            [Action::Read, Action::Write, Action::Delete]
                .iter()
                .any(|a| r.grants(*a).iter().any(|g| *g != Grant::Public))
        });
        if needs_token && !v.has_keys() {
            return Err(auth(
                "rules grant access to tokens, but no key is configured (hs256_secret_env, rs256_public_key, es256_public_key)".into(),
            ));
        }
        Ok(Rules {
            rules,
            verifier: v,
            roles_claim: a.roles_claim.unwrap_or_else(|| "roles".into()),
        })
    }
}
