//! Access control: who is asking, the rules' verdicts and schemas, and the denials they leave.

use std::fmt;

use super::Engine;
use crate::clock::Tick;
use crate::error::Error;
use crate::rules::{Action, Denied, Identity};
use crate::token::TokenError;

/// Why the access rules refused an attempt: the `reason` label of `/_metrics` and of the
/// denials log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialReason {
    /// No token where one is needed (401).
    NoToken,
    /// A token that is malformed, badly signed or for another algorithm (401).
    BadToken,
    /// An expired or not-yet-valid token (401).
    Expired,
    /// A valid token that the rules do not allow (403).
    Forbidden,
    /// A written value that does not match the rule's schema (400).
    Schema,
}

impl DenialReason {
    /// The label (`no_token`, `bad_token`, `expired`, `forbidden`, `schema`).
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::NoToken => "no_token",
            DenialReason::BadToken => "bad_token",
            DenialReason::Expired => "expired",
            DenialReason::Forbidden => "forbidden",
            DenialReason::Schema => "schema",
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            DenialReason::NoToken,
            DenialReason::BadToken,
            DenialReason::Expired,
            DenialReason::Forbidden,
            DenialReason::Schema,
        ]
        .map(|r| (r.as_str(), self.count(r)))
    }

    /// The count of one reason.
    pub fn count(&self, reason: DenialReason) -> u64 {
        match reason {
            DenialReason::NoToken => self.no_token,
            DenialReason::BadToken => self.bad_token,
            DenialReason::Expired => self.expired,
            DenialReason::Forbidden => self.forbidden,
            DenialReason::Schema => self.schema,
        }
    }

    fn add(&mut self, reason: DenialReason) {
        let n = match reason {
            DenialReason::NoToken => &mut self.no_token,
            DenialReason::BadToken => &mut self.bad_token,
            DenialReason::Expired => &mut self.expired,
            DenialReason::Forbidden => &mut self.forbidden,
            DenialReason::Schema => &mut self.schema,
        };
        *n += 1;
    }
}

/// One refused attempt, for the adapter to log (drain with [`Engine::poll_denial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What was attempted (a refused token or subscription: [`Action::Read`]).
    pub action: Action,
    /// The key (or pattern) asked for.
    pub target: String,
    /// Why it was refused.
    pub reason: DenialReason,
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
        match self.rules() {
            None => Identity::Anonymous,
            Some(r) => r.identify(token, tick.wall_ns.div_euclid(1_000_000_000)),
        }
    }

    fn record(&mut self, action: Action, target: &str, who: &Identity, e: &Error) {
        let reason = match e {
            Error::Unauthorized(_) | Error::NoToken(_) => match who {
                Identity::Invalid(TokenError::Expired | TokenError::NotYetValid) => {
                    DenialReason::Expired
                }
                Identity::Invalid(_) => DenialReason::BadToken,
                _ => DenialReason::NoToken,
            },
            Error::Forbidden(_) => DenialReason::Forbidden,
            Error::Schema(_) => DenialReason::Schema,
            _ => return,
        };
        self.stats.denied.add(reason);
        if self.denials.len() >= MAX_DENIALS {
            self.denials.pop_front();
        }
        self.denials.push_back(Denial {
            action,
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
        let Some(rules) = self.rules() else {
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
        if let (Some(_), Identity::Invalid(t)) = (self.rules(), who) {
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
        v: &mut super::Given,
        who: &Identity,
    ) -> Result<(), Error> {
        let Some(schema) = self
            .rules()
            .and_then(|r| r.rule_for(key))
            .and_then(|r| r.schema.clone())
        else {
            return Ok(());
        };
        schema.validate(v.tree()).map_err(|detail| {
            let e = Error::Schema(format!("{key}: {detail}"));
            self.record(Action::Write, key, who, &e);
            e
        })
    }
}
