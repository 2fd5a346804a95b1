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

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::filter::Limit;
use crate::key::{Pattern, Segment};
use crate::token::{Claims, TokenError, Verifier};

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

/// Who is asking: what the adapter learnt from the request's token.
#[derive(Debug, Clone, Default)]
pub enum Identity {
    /// No token.
    #[default]
    Anonymous,
    /// A verified token.
    User(Arc<Claims>),
    /// A token was presented and refused: every rule-checked request gets 401.
    Invalid(TokenError),
    /// The embedding program itself (the Rust API): rules do not apply.
    System,
}

impl Identity {
    /// The `sub` claim, for logs.
    pub fn subject(&self) -> Option<String> {
        match self {
            Identity::User(c) => c.text("sub"),
            _ => None,
        }
    }

    /// `exp` of the token (Unix seconds), if any.
    pub fn expires(&self) -> Option<i64> {
        match self {
            Identity::User(c) => c.exp(),
            _ => None,
        }
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A token is needed and none was given (401).
    NoToken(String),
    /// The token given was refused (401).
    BadToken(TokenError),
    /// The token is valid but does not allow this (403).
    Forbidden(String),
}

/// What a subscriber's identity contributes to what a pattern shows it: whether it has a token,
/// the claims that rules compare with path segments, and the roles rules name. Callers with
/// equal audiences see exactly the same keys, so they can share a pool; the default audience
/// (the public) is every anonymous caller, and every caller of a pattern whose rules read-grant
/// only `public`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience {
    all: bool,
    token: bool,
    claims: Vec<(Box<str>, Box<str>)>,
    roles: Vec<Box<str>>,
}

impl Audience {
    /// Sees everything (no rules, or the embedding program).
    pub fn all() -> Audience {
        Audience {
            all: true,
            ..Audience::default()
        }
    }

    /// A short description for the state API and logs (no claim values: they may be personal).
    pub fn label(&self) -> String {
        if self.all {
            "all".into()
        } else if !self.token {
            "public".into()
        } else {
            let names: Vec<&str> = self.claims.iter().map(|(n, _)| &**n).collect();
            format!("token[{}]", names.join(","))
        }
    }
}

/// Reads what grants need from a caller: a full identity or a pool's audience.
trait Principal {
    fn sees_all(&self) -> bool;
    fn has_token(&self) -> bool;
    fn claim(&self, name: &str) -> Option<Cow<'_, str>>;
    fn has_role(&self, claim: &str, role: &str) -> bool;
}

impl Principal for Identity {
    fn sees_all(&self) -> bool {
        matches!(self, Identity::System)
    }
    fn has_token(&self) -> bool {
        matches!(self, Identity::User(_))
    }
    fn claim(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Identity::User(c) => c.text(name).map(Cow::Owned),
            _ => None,
        }
    }
    fn has_role(&self, claim: &str, role: &str) -> bool {
        matches!(self, Identity::User(c) if c.has_role(claim, role))
    }
}

impl Principal for Audience {
    fn sees_all(&self) -> bool {
        self.all
    }
    fn has_token(&self) -> bool {
        self.token
    }
    fn claim(&self, name: &str) -> Option<Cow<'_, str>> {
        self.claims
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| Cow::Borrowed(&**v))
    }
    fn has_role(&self, _claim: &str, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    Any,
    Capture(Box<str>),
    // `**`: this position and everything below it (zero or more segments); last only.
    Rest,
}

impl Seg {
    // Specificity at one position; `END` marks a pattern that stops here (beats `**`).
    fn rank(&self) -> u8 {
        match self {
            Seg::Lit(_) => 3,
            Seg::Any | Seg::Capture(_) => 2,
            Seg::Rest => 1,
        }
    }
    fn wild(&self) -> bool {
        !matches!(self, Seg::Lit(_))
    }
}

const END: u8 = 4;

/// A rule's pattern: literal segments, `*` (any one segment), `{claim}` (any one segment, named
/// so a grant can compare it with a token claim) and a final `**` (everything below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePattern {
    text: String,
    segs: Vec<Seg>,
}

impl RulePattern {
    /// Parses a rule pattern.
    pub fn parse(s: &str) -> Result<RulePattern, String> {
        let s = s.trim().trim_start_matches('/');
        if s.is_empty() {
            return Err("empty pattern (use ** for every key)".into());
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "**" if i + 1 == parts.len() => Seg::Rest,
                "**" => return Err("** may only be the last segment".into()),
                "*" => Seg::Any,
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("bad claim name {name:?} in {{...}}"));
                    }
                    Seg::Capture(name.into())
                }
                p => {
                    crate::key::validate_key(p).map_err(|e| format!("segment {p:?}: {e}"))?;
                    Seg::Lit((*p).into())
                }
            };
            segs.push(seg);
        }
        Ok(RulePattern {
            text: s.to_string(),
            segs,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn rest_at(&self) -> Option<usize> {
        (self.segs.last() == Some(&Seg::Rest)).then(|| self.segs.len() - 1)
    }

    /// Whether `key` matches, with the `{claim}` captures.
    fn captures<'k>(&self, key: &'k str) -> Option<Vec<(&str, &'k str)>> {
        let mut caps = Vec::new();
        let mut parts = key.split('/');
        for seg in &self.segs {
            match seg {
                Seg::Rest => return Some(caps),
                _ => {
                    let p = parts.next()?;
                    match seg {
                        Seg::Lit(l) if &**l != p => return None,
                        Seg::Capture(n) => caps.push((&**n, p)),
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(caps)
    }

    /// Whether a key matches.
    pub fn matches(&self, key: &str) -> bool {
        self.captures(key).is_some()
    }

    fn rank(&self) -> Vec<u8> {
        let mut r: Vec<u8> = self.segs.iter().map(Seg::rank).collect();
        if self.rest_at().is_none() {
            r.push(END);
        }
        r
    }

    fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Capture(n) => Some(&**n),
            _ => None,
        })
    }

    /// Whether some key matched by `p` (a key, glob or subtree) may also match this pattern.
    /// Errs on the side of `true`: it decides which rules shape a subscription's audience.
    pub fn overlaps(&self, p: &Pattern) -> bool {
        let compatible = |r: &Seg, lit: Option<&str>| match (r, lit) {
            (Seg::Lit(a), Some(b)) => &**a == b,
            _ => true,
        };
        let rest = self.rest_at();
        let fixed = &self.segs[..rest.unwrap_or(self.segs.len())];
        match p {
            Pattern::Key(k) => self.matches(k),
            Pattern::Glob(_, gs) => {
                let n = gs.len();
                let len_ok = match rest {
                    Some(j) => n >= j,
                    None => n == fixed.len(),
                };
                len_ok
                    && fixed.iter().zip(gs).all(|(r, g)| match g {
                        Segment::Lit(l) => compatible(r, Some(l)),
                        Segment::Star => true,
                    })
            }
            Pattern::Subtree(prefix) => {
                let ps: Vec<&str> = if prefix.is_empty() {
                    Vec::new()
                } else {
                    prefix.split('/').collect()
                };
                let len_ok = rest.is_some() || fixed.len() > ps.len();
                len_ok && fixed.iter().zip(&ps).all(|(r, l)| compatible(r, Some(l)))
            }
        }
    }

    // The glob the core's limit filter understands (`{claim}` → `*`); `**` has none.
    fn as_glob(&self) -> Option<String> {
        let mut out = Vec::new();
        for s in &self.segs {
            out.push(match s {
                Seg::Lit(l) => l.to_string(),
                Seg::Any | Seg::Capture(_) => "*".into(),
                Seg::Rest => return None,
            });
        }
        Some(out.join("/"))
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

/// A compiled JSON Schema (drafts 4, 6 and 7; `$ref` within the document).
#[derive(Debug, Clone)]
pub struct Schema(Arc<Value>);

impl Schema {
    /// Checks the schema against its metaschema.
    pub fn new(schema: Value) -> Result<Schema, String> {
        let cfg = jsonschema_valid::Config::from_schema(&schema, None)
            .map_err(|e| format!("schema: {e}"))?;
        if let Err(errs) = cfg.validate_schema() {
            let msgs: Vec<String> = errs.take(3).map(|e| e.to_string()).collect();
            return Err(format!("schema is not valid: {}", msgs.join("; ")));
        }
        drop(cfg);
        Ok(Schema(Arc::new(schema)))
    }

    /// Validates a value; the error names up to three violations.
    pub fn validate(&self, v: &Value) -> Result<(), String> {
        let cfg = jsonschema_valid::Config::from_schema(&self.0, None)
            .map_err(|e| format!("schema: {e}"))?;
        let r = match cfg.validate(v) {
            Ok(()) => Ok(()),
            Err(errs) => {
                // One line per violation: where in the value, and what is wrong (the error's own
                // Display adds the pretty-printed instance and schema over several lines).
                let msgs: Vec<String> = errs.take(3).map(|e| violation(&e)).collect();
                Err(msgs.join("; "))
            }
        };
        r
    }
}

/// `at /items/0: "x" is not of type "integer"`: a schema violation on one line, the path in the
/// value first (the library keeps it innermost first).
fn violation(e: &jsonschema_valid::ValidationError) -> String {
    let path: Vec<&str> = e.instance_path.iter().rev().map(String::as_str).collect();
    let msg = e.msg.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("at /{}: {msg}", path.join("/"))
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

    /// Signs a development token for this file's HS256 secret: `sub`, `roles` under the
    /// configured roles claim (when any), `extra` claims, and an expiry `ttl_secs` from
    /// `now_secs`. The token is verified with this file's own checks before it is returned.
    pub fn mint(
        &self,
        sub: &str,
        roles: &[String],
        extra: serde_json::Map<String, Value>,
        now_secs: i64,
        ttl_secs: i64,
    ) -> Result<String, String> {
        let mut claims = extra;
        claims.insert("sub".into(), sub.into());
        if !roles.is_empty() {
            claims.insert(self.roles_claim.clone(), roles.to_vec().into());
        }
        let t = self.verifier.mint(claims, now_secs, ttl_secs)?;
        self.verifier
            .verify(&t, now_secs)
            .map_err(|e| format!("the signed token does not verify: {e}"))?;
        Ok(t)
    }

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
            let pattern = RulePattern::parse(&r.pattern).map_err(bad)?;
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
                (Some(s), None) => Some(Schema::new(s).map_err(bad)?),
                (None, Some(f)) => {
                    let text = env.file(f).map_err(bad)?;
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| bad(format!("schema_file {f}: {e}")))?;
                    Some(Schema::new(v).map_err(bad)?)
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

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The compiled rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Verifies a token (if any) at `now_secs`.
    pub fn identify(&self, token: Option<&str>, now_secs: i64) -> Identity {
        match token {
            None => Identity::Anonymous,
            Some(t) => match self.verifier.verify(t, now_secs) {
                Ok(c) => Identity::User(Arc::new(c)),
                Err(e) => Identity::Invalid(e),
            },
        }
    }

    /// The rule that decides for `key`: the most specific match.
    pub fn rule_for(&self, key: &str) -> Option<&Rule> {
        let mut best: Option<(&Rule, Vec<u8>)> = None;
        for r in &self.rules {
            if r.pattern.matches(key) {
                let rank = r.pattern.rank();
                if best.as_ref().is_none_or(|(_, b)| rank > *b) {
                    best = Some((r, rank));
                }
            }
        }
        best.map(|(r, _)| r)
    }

    fn allows(&self, rule: &Rule, a: Action, key: &str, who: &dyn Principal) -> bool {
        rule.grants(a).iter().any(|g| match g {
            Grant::Public => true,
            Grant::Token => who.has_token(),
            Grant::Role(r) => who.has_token() && who.has_role(&self.roles_claim, r),
            Grant::Owner => {
                who.has_token()
                    && rule.pattern.captures(key).is_some_and(|caps| {
                        caps.iter()
                            .all(|(name, seg)| who.claim(name).as_deref() == Some(*seg))
                    })
            }
        })
    }

    /// The verdict for one caller doing `a` on `key`.
    pub fn check(&self, a: Action, key: &str, who: &Identity) -> Result<(), Denied> {
        if let Identity::Invalid(e) = who {
            return Err(Denied::BadToken(e.clone()));
        }
        if who.sees_all() {
            return Ok(());
        }
        let Some(rule) = self.rule_for(key) else {
            return Err(Denied::Forbidden(format!("no rule allows access to {key}")));
        };
        if self.allows(rule, a, key, who) {
            return Ok(());
        }
        let grants = rule.grants(a);
        if !who.has_token() && !grants.is_empty() {
            return Err(Denied::NoToken(format!(
                "{} of {key} needs a token",
                a.as_str()
            )));
        }
        let why = if rule.read_only && a != Action::Read {
            "is read-only".to_string()
        } else if grants.is_empty() {
            format!("cannot be {} by anyone", past(a))
        } else {
            format!("cannot be {} with this token", past(a))
        };
        Err(Denied::Forbidden(format!("{key} {why}")))
    }

    /// Whether a pool with this audience may show `key` (the same verdict as [`Rules::check`]
    /// would give each of its subscribers).
    pub fn visible(&self, key: &str, aud: &Audience) -> bool {
        if aud.all {
            return true;
        }
        self.rule_for(key)
            .is_some_and(|r| self.allows(r, Action::Read, key, aud))
    }

    /// The audience of `who` for subscriptions and lists of `p`: only what the read grants of
    /// the rules that may match keys of `p` look at.
    pub fn audience(&self, p: &Pattern, who: &Identity) -> Audience {
        if who.sees_all() {
            return Audience::all();
        }
        let mut needs_token = false;
        let mut names = BTreeSet::new();
        let mut roles = BTreeSet::new();
        for r in self.rules.iter().filter(|r| r.pattern.overlaps(p)) {
            for g in &r.read {
                match g {
                    Grant::Public => {}
                    Grant::Token => needs_token = true,
                    Grant::Owner => {
                        needs_token = true;
                        names.extend(r.pattern.capture_names());
                    }
                    Grant::Role(x) => {
                        needs_token = true;
                        roles.insert(x.as_str());
                    }
                }
            }
        }
        if !needs_token || !who.has_token() {
            return Audience::default();
        }
        Audience {
            all: false,
            token: true,
            claims: names
                .into_iter()
                .filter_map(|n| who.claim(n).map(|v| (n.into(), v.as_ref().into())))
                .collect(),
            roles: roles
                .into_iter()
                .filter(|r| who.has_role(&self.roles_claim, r))
                .map(Into::into)
                .collect(),
        }
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

fn past(a: Action) -> &'static str {
    match a {
        Action::Read => "read",
        Action::Write => "written",
        Action::Delete => "deleted",
    }
}

// Same specificity everywhere and the same literals: every key one matches, the other matches
// too, and neither is more specific.
fn same_shape(a: &RulePattern, b: &RulePattern) -> bool {
    a.rank() == b.rank()
        && a.segs.iter().zip(&b.segs).all(|(x, y)| match (x, y) {
            (Seg::Lit(p), Seg::Lit(q)) => p == q,
            _ => x.wild() && y.wild(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::sign_hs256;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-rules-secret";
    const NOW: i64 = 1_800_000_000;

    struct Env;
    impl Resolve for Env {
        fn env(&self, name: &str) -> Option<String> {
            (name == "SECRET").then(|| SECRET.to_string())
        }
        fn file(&self, path: &str) -> Result<String, String> {
            Err(format!("{path}: no files in tests"))
        }
    }

    const EXAMPLE: &str = r#"
        [auth]
        hs256_secret_env = "SECRET"

        [[rule]]
        pattern = "private/{sub}/**"
        read = "owner"
        write = "owner"
        delete = "owner"

        [[rule]]
        pattern = "**"
        read = "public"
        write = "public"
        delete = "public"

        [[rule]]
        pattern = "config/*"
        read = "public"
        read_only = true

        [[rule]]
        pattern = "admin/**"
        read = ["role:admin"]
        write = "role:admin"

        [[rule]]
        pattern = "members/*"
        read = "token"
        write = "token"
        schema = { type = "object", required = ["name"], properties = { name = { type = "string" } } }
        ttl_secs = 60
        limit = { count = 3 }
    "#;

    fn rules() -> Rules {
        Rules::from_toml_str(EXAMPLE, &Env).unwrap()
    }

    fn user(r: &Rules, claims: Value) -> Identity {
        r.identify(Some(&sign_hs256(&claims, SECRET.as_bytes())), NOW)
    }

    fn verdict(r: &Rules, a: Action, key: &str, who: &Identity) -> &'static str {
        match r.check(a, key, who) {
            Ok(()) => "ok",
            Err(Denied::NoToken(_)) => "401",
            Err(Denied::BadToken(_)) => "401-bad",
            Err(Denied::Forbidden(_)) => "403",
        }
    }

    #[test]
    fn minted_tokens_pass_the_rules() {
        let r = rules();
        let t = r
            .mint("alice", &["admin".into()], Default::default(), NOW, 3600)
            .unwrap();
        let who = r.identify(Some(&t), NOW);
        assert_eq!(who.subject().as_deref(), Some("alice"));
        assert_eq!(verdict(&r, Action::Write, "admin/x", &who), "ok");
        // Expired once its time is over (plus the leeway).
        let later = r.identify(Some(&t), NOW + 3600 + 3600);
        assert!(matches!(later, Identity::Invalid(_)), "{later:?}");
        // A file with only a public key cannot sign.
        let rs =
            Rules::from_toml_str("[[rule]]\npattern = \"**\"\nread = \"public\"\n", &Env).unwrap();
        assert!(rs
            .mint("bob", &[], Default::default(), NOW, 60)
            .unwrap_err()
            .contains("no HS256 secret"));
    }

    #[test]
    fn precedence_and_grants() {
        let r = rules();
        let alice = user(&r, json!({"sub":"alice","exp":NOW+60}));
        let bob = user(&r, json!({"sub":"bob","exp":NOW+60}));
        let admin = user(&r, json!({"sub":"root","exp":NOW+60,"roles":["admin"]}));
        let expired = user(&r, json!({"sub":"alice","exp":NOW-3600}));
        let anon = Identity::Anonymous;
        use Action::*;
        let cases: &[(Action, &str, &Identity, &str)] = &[
            (Read, "private/alice/notes", &alice, "ok"),
            (Read, "private/alice", &alice, "ok"),
            (Read, "private/alice/a/b/c", &alice, "ok"),
            (Write, "private/alice/notes", &alice, "ok"),
            (Delete, "private/alice/notes", &alice, "ok"),
            (Read, "private/alice/notes", &bob, "403"),
            (Write, "private/alice/notes", &bob, "403"),
            (Read, "private/alice/notes", &anon, "401"),
            (Delete, "private/alice/notes", &anon, "401"),
            (Read, "private/alice/notes", &expired, "401-bad"),
            // An invalid token is refused even where the public may go.
            (Read, "todos/1", &expired, "401-bad"),
            (Read, "todos/1", &anon, "ok"),
            (Write, "todos/1", &anon, "ok"),
            (Read, "private", &anon, "ok"),
            (Read, "config/site", &anon, "ok"),
            (Write, "config/site", &admin, "403"),
            (Write, "config/site", &anon, "403"),
            // `config/*` is more specific than `**`, so `config/a/b` falls back to `**`.
            (Write, "config/a/b", &anon, "ok"),
            (Read, "admin/x", &admin, "ok"),
            (Read, "admin/x", &alice, "403"),
            (Read, "admin/x", &anon, "401"),
            (Delete, "admin/x", &admin, "403"),
            (Read, "members/1", &alice, "ok"),
            (Read, "members/1", &anon, "401"),
        ];
        for (a, key, who, want) in cases {
            assert_eq!(verdict(&r, *a, key, who), *want, "{a:?} {key} {who:?}");
        }
        assert!(matches!(
            r.check(Read, "x", &expired),
            Err(Denied::BadToken(TokenError::Expired))
        ));
        assert_eq!(
            r.rule_for("members/1").unwrap().ttl_ns,
            Some(60_000_000_000)
        );
        assert_eq!(
            r.limits(),
            vec![(
                "members/*".to_string(),
                Limit {
                    count: Some(3),
                    max_age_ns: None
                }
            )]
        );
    }

    #[test]
    fn no_rule_means_nobody() {
        let r = Rules::from_toml_str(
            "[[rule]]\npattern = \"open/*\"\nread = \"public\"\n",
            &Inline,
        )
        .unwrap();
        assert_eq!(
            verdict(&r, Action::Read, "open/1", &Identity::Anonymous),
            "ok"
        );
        assert_eq!(
            verdict(&r, Action::Write, "open/1", &Identity::Anonymous),
            "403"
        );
        assert_eq!(
            verdict(&r, Action::Read, "closed", &Identity::Anonymous),
            "403"
        );
        assert_eq!(verdict(&r, Action::Read, "closed", &Identity::System), "ok");
    }

    #[test]
    fn schema_validation() {
        let r = rules();
        let s = r.rule_for("members/1").unwrap().schema.clone().unwrap();
        assert!(s.validate(&json!({"name":"x"})).is_ok());
        let e = s.validate(&json!({"name":1})).unwrap_err();
        // One line, the path first, no pretty-printed JSON squashed into it.
        assert!(e.starts_with("at /name: "), "{e}");
        assert!(!e.contains('\n') && !e.contains("  "), "{e}");
        assert!(s.validate(&json!({})).is_err());
        assert!(s.validate(&json!([1])).is_err());
    }

    #[test]
    fn refused_at_load() {
        let bad: &[(&str, &str)] = &[
            ("[[rule]]\npattern = \"a/*\"\nread = \"public\"\n[[rule]]\npattern = \"a/{sub}\"\nread = \"owner\"\n", "same specificity"),
            ("[[rule]]\npattern = \"x\"\n[[rule]]\npattern = \"x\"\n", "same specificity"),
            ("[[rule]]\npattern = \"a/**/b\"\n", "** may only"),
            ("[[rule]]\npattern = \"a\"\nread = \"owner\"\n", "owner needs"),
            ("[[rule]]\npattern = \"a\"\nread = \"everyone\"\n", "unknown grant"),
            ("[[rule]]\npattern = \"a\"\nread = \"token\"\n", "no key is configured"),
            ("[[rule]]\npattern = \"a\"\nread_only = true\nwrite = \"public\"\n", "read_only"),
            ("[[rule]]\npattern = \"a/**\"\nlimit = { count = 1 }\n", "without **"),
            ("[[rule]]\npattern = \"a/*\"\nlimit = { }\n", "count or max_age"),
            ("[[rule]]\npattern = \"a\"\nschema = { type = 12 }\n", "schema"),
            ("[[rule]]\npattern = \"a\"\nttl_secs = -1\n", "ttl_secs"),
            ("[[rule]]\npattern = \"a\"\ncolour = \"red\"\n", "unknown field"),
            ("[auth]\nhs256_secret_env = \"NOPE\"\n", "NOPE"),
            ("[auth]\nhs256_secret = \"short\"\n", "16 bytes"),
            ("[auth]\nrs256_public_key = \"junk\"\n", "RS256"),
            ("[auth]\nes256_public_key_file = \"k.pem\"\n", "k.pem"),
            ("not toml at all [", "rules file"),
        ];
        for (text, needle) in bad {
            let e = Rules::from_toml_str(text, &Env).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        // Different specificity is fine: the more specific one wins.
        let ok = Rules::from_toml_str(
            "[[rule]]\npattern = \"a/*\"\nread = \"public\"\n[[rule]]\npattern = \"*/b\"\n[[rule]]\npattern = \"a/**\"\n",
            &Env,
        )
        .unwrap();
        assert_eq!(ok.rule_for("a/b").unwrap().pattern.as_str(), "a/*");
        assert_eq!(ok.rule_for("c/b").unwrap().pattern.as_str(), "*/b");
        assert_eq!(ok.rule_for("a").unwrap().pattern.as_str(), "a/**");
        // The JSON form has the same schema.
        let j = Rules::from_json_str(
            r#"{"auth":{"hs256_secret_env":"SECRET"},"rules":[{"pattern":"p/{sub}","read":["owner","role:ops"]}]}"#,
            &Env,
        )
        .unwrap();
        assert_eq!(j.rules().len(), 1);
    }

    #[test]
    fn overlap_and_audience() {
        let p = |s: &str| RulePattern::parse(s).unwrap();
        let k = |s: &str| Pattern::from_http_path(s, true).unwrap();
        let cases = [
            ("private/{sub}/**", "/private/*/x", true),
            ("private/{sub}/**", "/private/", true),
            ("private/{sub}/**", "/", true),
            ("private/{sub}/**", "/public/*", false),
            ("private/{sub}/**", "/*", false),
            ("private/{sub}/**", "/*/*", true),
            ("private/{sub}/**", "/private", false),
            ("a/*", "/a/", true),
            ("a/*", "/a/b/", false),
            ("a/*/c", "/*/*/*", true),
            ("a/*/c", "/*/*/d", false),
        ];
        for (rule, pat, want) in cases {
            assert_eq!(p(rule).overlaps(&k(pat)), want, "{rule} ~ {pat}");
        }
        let r = rules();
        let alice = user(&r, json!({"sub":"alice","exp":NOW+60}));
        let alice2 = user(&r, json!({"sub":"alice","exp":NOW+99,"x":1}));
        let bob = user(&r, json!({"sub":"bob","exp":NOW+60}));
        let todos = k("/todos/*");
        // Public patterns: everybody shares the public audience.
        assert_eq!(r.audience(&todos, &alice), Audience::default());
        assert_eq!(
            r.audience(&todos, &Identity::Anonymous),
            Audience::default()
        );
        let all = k("/private/");
        assert_eq!(r.audience(&all, &alice), r.audience(&all, &alice2));
        assert_ne!(r.audience(&all, &alice), r.audience(&all, &bob));
        assert_eq!(r.audience(&all, &Identity::Anonymous), Audience::default());
        let a = r.audience(&all, &alice);
        assert!(r.visible("private/alice/x", &a));
        assert!(!r.visible("private/bob/x", &a));
        assert!(!r.visible("private/alice/x", &Audience::default()));
        assert!(r.visible("private/bob/x", &Audience::all()));
    }
}
