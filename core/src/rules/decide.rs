//! Decisions: which rule decides for a key, the verdict for a caller, and audiences.

use std::collections::BTreeSet;

use super::{Action, Audience, Grant, Identity, Principal, Rule, Rules};
use crate::key::Pattern;
use crate::token::TokenError;

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

impl Rules {
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
}

fn past(a: Action) -> &'static str {
    match a {
        Action::Read => "read",
        Action::Write => "written",
        Action::Delete => "deleted",
    }
}
