//! Access control: who is asking, the rules' verdicts and schemas, and the denials they leave.

use serde_json::Value;

use super::Engine;
use crate::clock::Tick;
use crate::error::Error;
use crate::rules::{Action, Denied, Identity};

/// Refusals by the access rules, by reason (the `reason` label of `/_metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeniedStats {
    /// No token where one is needed (401).
    pub no_token: u64,
    /// A token that is malformed, badly signed or for another algorithm (401).
    pub bad_token: u64,
    /// An expired or not-yet-valid token (401).
    pub expired: u64,
    /// A valid token that the rules do not allow (403).
    pub forbidden: u64,
    /// A written value that does not match the rule's schema (400).
    pub schema: u64,
}

impl DeniedStats {
    /// `(reason, count)` pairs in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("no_token", self.no_token),
            ("bad_token", self.bad_token),
            ("expired", self.expired),
            ("forbidden", self.forbidden),
            ("schema", self.schema),
        ]
    }
}

/// One refused attempt, for the adapter to log (drain with [`Engine::poll_denial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `read`, `write` or `delete`.
    pub action: &'static str,
    /// The key (or pattern) asked for.
    pub target: String,
    /// The metrics reason (`no_token`, `bad_token`, `expired`, `forbidden`, `schema`).
    pub reason: &'static str,
    /// The token's `sub`, if it had a valid one.
    pub subject: Option<String>,
    /// The text the client was given.
    pub detail: String,
}

// Denials kept for the adapter to log between drains; older ones are dropped (still counted).
const MAX_DENIALS: usize = 1024;

impl Engine {
    /// Who presents `token` now: verified against the access rules' keys with the wall clock
    /// of `tick`. Without rules every caller is anonymous (and everything is allowed).
    pub fn identify(&self, tick: Tick, token: Option<&str>) -> Identity {
        match self.filters.rules() {
            None => Identity::Anonymous,
            Some(r) => r.identify(token, tick.wall_ns.div_euclid(1_000_000_000)),
        }
    }

    fn record(&mut self, action: Action, target: &str, who: &Identity, e: &Error) {
        let reason = match e {
            Error::Unauthorized(_) | Error::NoToken(_) => match who {
                Identity::Invalid(t) if t.label() == "expired" || t.label() == "not_yet_valid" => {
                    self.stats.denied.expired += 1;
                    "expired"
                }
                Identity::Invalid(_) => {
                    self.stats.denied.bad_token += 1;
                    "bad_token"
                }
                _ => {
                    self.stats.denied.no_token += 1;
                    "no_token"
                }
            },
            Error::Forbidden(_) => {
                self.stats.denied.forbidden += 1;
                "forbidden"
            }
            Error::Schema(_) => {
                self.stats.denied.schema += 1;
                "schema"
            }
            _ => return,
        };
        if self.denials.len() >= MAX_DENIALS {
            self.denials.pop_front();
        }
        self.denials.push_back(Denial {
            action: action.as_str(),
            target: target.to_string(),
            reason,
            subject: who.subject(),
            detail: e.to_string(),
        });
    }

    /// The next refused attempt to log.
    pub fn poll_denial(&mut self) -> Option<Denial> {
        self.denials.pop_front()
    }

    /// Checks the access rules for `who` doing `action` on `key`; a refusal is counted and
    /// queued for the adapter's log. Always allowed without rules.
    pub fn authorize(&mut self, action: Action, key: &str, who: &Identity) -> Result<(), Error> {
        let Some(rules) = self.filters.rules() else {
            return Ok(());
        };
        let e = match rules.check(action, key, who) {
            Ok(()) => return Ok(()),
            Err(Denied::NoToken(m)) => Error::NoToken(m),
            Err(Denied::BadToken(t)) => Error::Unauthorized(t.to_string()),
            Err(Denied::Forbidden(m)) => Error::Forbidden(m),
        };
        self.record(action, key, who, &e);
        Err(e)
    }

    /// Refuses a caller whose token was refused, for routes that are not about one key (lists,
    /// subscriptions to globs, the keys API): they still answer 401, never a silently public view.
    pub fn authorize_caller(&mut self, target: &str, who: &Identity) -> Result<(), Error> {
        if let (Some(_), Identity::Invalid(t)) = (self.filters.rules(), who) {
            let e = Error::Unauthorized(t.to_string());
            self.record(Action::Read, target, who, &e);
            return Err(e);
        }
        Ok(())
    }

    /// Whether `who` may read `key` (for filtering lists; nothing is recorded).
    pub fn can_read(&self, key: &str, who: &Identity) -> bool {
        self.filters
            .rules()
            .is_none_or(|r| r.check(Action::Read, key, who).is_ok())
    }

    // The rule's JSON Schema, on the value about to be stored (after write filters).
    pub(super) fn check_schema(
        &mut self,
        key: &str,
        v: &Value,
        who: &Identity,
    ) -> Result<(), Error> {
        let Some(schema) = self
            .filters
            .rules()
            .and_then(|r| r.rule_for(key))
            .and_then(|r| r.schema.clone())
        else {
            return Ok(());
        };
        schema.validate(v).map_err(|detail| {
            let e = Error::Schema(format!("{key}: {detail}"));
            self.record(Action::Write, key, who, &e);
            e
        })
    }
}
