//! Who is asking: a request's identity, a pool's audience, and what grants read from either.

use std::borrow::Cow;
use std::sync::Arc;

use crate::token::{Claims, TokenError};

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

/// What a subscriber's identity contributes to what a pattern shows it: whether it has a token,
/// the claims that rules compare with path segments, and the roles rules name. Callers with
/// equal audiences see exactly the same keys, so they can share a pool; the default audience
/// (the public) is every anonymous caller, and every caller of a pattern whose rules read-grant
/// only `public`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience {
    pub(super) all: bool,
    pub(super) token: bool,
    pub(super) claims: Vec<(Box<str>, Box<str>)>,
    pub(super) roles: Vec<Box<str>>,
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
pub(super) trait Principal {
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
