//! Tokens: verifying a caller's token, and signing development tokens.

use std::sync::Arc;

use serde_json::Value;

use super::{Identity, Rules};

impl Rules {
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
}
