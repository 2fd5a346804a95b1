//! JSON Web Tokens: verification of HS256, RS256 and ES256 tokens against configured keys, with
//! expiry (`exp`), not-before (`nbf`) and a clock-skew leeway.
//!
//! Owns the compact JWS format (RFC 7515/7519), the three algorithms and the time checks. It
//! does not read keys from files or the environment (the adapter hands them in) and does not read
//! a clock: the current time is an argument. Built on the RustCrypto crates (`hmac`, `sha2`,
//! `rsa`, `p256`) without their `std`/`getrandom` features, so it builds for wasm32 and the core's
//! `.wasm` still imports nothing (`jsonwebtoken` cannot: it depends on `getrandom` directly).
//! The algorithm a token names must have a configured key; `none` and every other algorithm are
//! refused, and the HS256 secret is never used for another algorithm (no key confusion).

use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Why a token was refused. The text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or the header or claims are not JSON objects.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm this server does not accept.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// The token has no `exp` and the server requires one.
    #[error("token has no exp claim")]
    NoExpiry,
    /// `iss` or `aud` is not the configured one.
    #[error("token {0} claim does not match")]
    Claim(&'static str),
}

impl TokenError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Signature => "bad_signature",
            _ => "bad_token",
        }
    }
}

/// A key set configuration could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The HS256 secret is empty or too short to be a secret.
    #[error("the HS256 secret must be at least 16 bytes")]
    WeakSecret,
    /// A PEM public key could not be read.
    #[error("{alg} public key: {detail}")]
    Pem {
        /// The algorithm it was for.
        alg: &'static str,
        /// Why.
        detail: String,
    },
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// A claim as text: strings as they are, integers in decimal; other types are `None` (so a
    /// path segment is only ever compared with a scalar).
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }

    /// Whether the roles claim `claim` (an array of strings, or one string) contains `role`.
    pub fn has_role(&self, claim: &str, role: &str) -> bool {
        match self.0.get(claim) {
            Some(Value::String(s)) => s == role,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(role)),
            _ => false,
        }
    }

    /// `exp` in seconds, if present.
    pub fn exp(&self) -> Option<i64> {
        self.0.get("exp").and_then(Value::as_f64).map(|f| f as i64)
    }
}

/// The keys and checks tokens are verified with.
#[derive(Clone, Default)]
pub struct Verifier {
    hs256: Option<Arc<[u8]>>,
    rs256: Option<Arc<rsa::pkcs1v15::VerifyingKey<Sha256>>>,
    es256: Option<Arc<p256::ecdsa::VerifyingKey>>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: i64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` (a string, or an array of strings) must contain it.
    pub audience: Option<String>,
}

impl std::fmt::Debug for Verifier {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms())
            .field("leeway_secs", &self.leeway_secs)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

fn b64(s: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("a part is not base64url"))
}

fn b64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, TokenError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed(what)),
    }
}

impl Verifier {
    /// No keys; a leeway of 60 s; `exp` required.
    pub fn new() -> Verifier {
        Verifier {
            leeway_secs: 60,
            require_exp: true,
            ..Verifier::default()
        }
    }

    /// Accepts HS256 tokens signed with `secret` (at least 16 bytes).
    pub fn hs256(mut self, secret: &[u8]) -> Result<Verifier, KeyError> {
        if secret.len() < 16 {
            return Err(KeyError::WeakSecret);
        }
        self.hs256 = Some(secret.into());
        Ok(self)
    }

    /// Accepts RS256 tokens verified with this PEM public key (SPKI `PUBLIC KEY` or PKCS#1
    /// `RSA PUBLIC KEY`).
    pub fn rs256_pem(mut self, pem: &str) -> Result<Verifier, KeyError> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        let key = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
            .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
            .map_err(|e| KeyError::Pem {
                alg: "RS256",
                detail: e.to_string(),
            })?;
        self.rs256 = Some(Arc::new(rsa::pkcs1v15::VerifyingKey::new(key)));
        Ok(self)
    }

    /// Accepts ES256 tokens verified with this PEM public key (SPKI `PUBLIC KEY`, P-256).
    pub fn es256_pem(mut self, pem: &str) -> Result<Verifier, KeyError> {
        use p256::pkcs8::DecodePublicKey;
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            KeyError::Pem {
                alg: "ES256",
                detail: e.to_string(),
            }
        })?;
        self.es256 = Some(Arc::new(key));
        Ok(self)
    }

    /// The algorithms that have a key.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.hs256.is_some() {
            v.push("HS256");
        }
        if self.rs256.is_some() {
            v.push("RS256");
        }
        if self.es256.is_some() {
            v.push("ES256");
        }
        v
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.algorithms().is_empty()
    }

    /// Verifies a compact JWS at `now_secs` (Unix seconds, from the adapter's wall clock) and
    /// returns its claims.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header = object(&b64(h)?, "the header is not a JSON object")?;
        let signed = &token.trim().as_bytes()[..h.len() + 1 + c.len()];
        let sig = b64(s)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        match alg {
            "HS256" => {
                let key = self
                    .hs256
                    .as_ref()
                    .ok_or_else(|| TokenError::Algorithm(alg.into()))?;
                let mut mac = <Hmac<Sha256>>::new_from_slice(key)
                    .map_err(|_| TokenError::Algorithm(alg.into()))?;
                mac.update(signed);
                // Constant-time comparison.
                mac.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
            }
            "RS256" => {
                use rsa::signature::Verifier as _;
                let key = self
                    .rs256
                    .as_ref()
                    .ok_or_else(|| TokenError::Algorithm(alg.into()))?;
                let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice())
                    .map_err(|_| TokenError::Signature)?;
                key.verify(signed, &sig)
                    .map_err(|_| TokenError::Signature)?;
            }
            "ES256" => {
                use p256::ecdsa::signature::Verifier as _;
                let key = self
                    .es256
                    .as_ref()
                    .ok_or_else(|| TokenError::Algorithm(alg.into()))?;
                // JWS carries ES256 signatures as raw r || s (64 bytes), not DER.
                let sig =
                    p256::ecdsa::Signature::from_slice(&sig).map_err(|_| TokenError::Signature)?;
                key.verify(signed, &sig)
                    .map_err(|_| TokenError::Signature)?;
            }
            other => return Err(TokenError::Algorithm(other.into())),
        }
        let claims = Claims(object(&b64(c)?, "the claims are not a JSON object")?);
        let num = |name: &str| -> Result<Option<i64>, TokenError> {
            match claims.0.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|f| Some(f as i64))
                    .ok_or(TokenError::Malformed("exp and nbf must be numbers")),
            }
        };
        match num("exp")? {
            Some(exp) if now_secs > exp.saturating_add(self.leeway_secs) => {
                return Err(TokenError::Expired)
            }
            None if self.require_exp => return Err(TokenError::NoExpiry),
            _ => {}
        }
        if let Some(nbf) = num("nbf")? {
            if now_secs.saturating_add(self.leeway_secs) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(iss) = &self.issuer {
            if claims.0.get("iss").and_then(Value::as_str) != Some(iss) {
                return Err(TokenError::Claim("iss"));
            }
        }
        if let Some(aud) = &self.audience {
            let ok = match claims.0.get("aud") {
                Some(Value::String(a)) => a == aud,
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(TokenError::Claim("aud"));
            }
        }
        Ok(claims)
    }
}

impl Verifier {
    /// Signs a token this verifier accepts with its HS256 secret (`stateline token`, tests):
    /// `claims` plus `iat` and `exp` (`now_secs + ttl_secs`), and the `iss` and `aud` it
    /// requires. Refused when it has no HS256 secret (RS256/ES256 keys here are public keys,
    /// which cannot sign).
    pub fn mint(
        &self,
        mut claims: Map<String, Value>,
        now_secs: i64,
        ttl_secs: i64,
    ) -> Result<String, String> {
        let Some(secret) = &self.hs256 else {
            return Err("no HS256 secret is configured (hs256_secret or hs256_secret_env): only HS256 tokens can be signed here; RS256/ES256 tokens come from your identity provider".into());
        };
        claims.insert("iat".into(), now_secs.into());
        claims.insert("exp".into(), now_secs.saturating_add(ttl_secs).into());
        if let Some(iss) = &self.issuer {
            claims.entry("iss").or_insert_with(|| iss.clone().into());
        }
        if let Some(aud) = &self.audience {
            claims.entry("aud").or_insert_with(|| aud.clone().into());
        }
        Ok(sign_hs256(&Value::Object(claims), secret))
    }
}

/// Signs `claims` as an HS256 token: for tests, tools, and servers that mint their own tokens.
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let signed = format!(
        "{}.{}",
        b64_encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64_encode(crate::json::encode(claims).as_slice())
    );
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(signed.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signed}.{}", b64_encode(&sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";
    const NOW: i64 = 1_800_000_000;

    // Made with `openssl genrsa 2048` / `openssl ecparam -name prime256v1 -genkey`, test only.
    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/keys/ec_private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/keys/ec_public.pem");
    const OTHER_EC_PUBLIC: &str = include_str!("../tests/keys/ec_other_public.pem");

    fn sign_with(alg: &str, claims: &Value, f: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let signed = format!(
            "{}.{}",
            b64_encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
            b64_encode(claims.to_string().as_bytes())
        );
        let sig = f(signed.as_bytes());
        format!("{signed}.{}", b64_encode(&sig))
    }

    fn rs256(claims: &Value) -> String {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let k = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).unwrap();
        let sk = rsa::pkcs1v15::SigningKey::<Sha256>::new(k);
        sign_with("RS256", claims, |m| sk.sign(m).to_vec())
    }

    fn es256(claims: &Value) -> String {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::DecodePrivateKey;
        let sk = p256::ecdsa::SigningKey::from_pkcs8_pem(EC_PRIVATE).unwrap();
        sign_with("ES256", claims, |m| {
            let s: p256::ecdsa::Signature = sk.sign(m);
            s.to_bytes().to_vec()
        })
    }

    fn all_keys() -> Verifier {
        Verifier::new()
            .hs256(SECRET)
            .unwrap()
            .rs256_pem(RSA_PUBLIC)
            .unwrap()
            .es256_pem(EC_PUBLIC)
            .unwrap()
    }

    fn check(v: &Verifier, token: &str, expected: Result<&str, TokenError>) {
        let got = v
            .verify(token, NOW)
            .map(|c| c.text("sub").unwrap_or_default());
        assert_eq!(got.as_deref().map_err(Clone::clone), expected, "{token}");
    }

    #[test]
    fn algorithms_and_times() {
        let v = all_keys();
        let ok = json!({"sub":"alice","exp":NOW + 10});
        check(&v, &sign_hs256(&ok, SECRET), Ok("alice"));
        check(&v, &rs256(&ok), Ok("alice"));
        check(&v, &es256(&ok), Ok("alice"));
        // Expired beyond the leeway, and within it.
        let old = json!({"sub":"a","exp":NOW - 61});
        check(&v, &sign_hs256(&old, SECRET), Err(TokenError::Expired));
        check(&v, &rs256(&old), Err(TokenError::Expired));
        check(&v, &es256(&old), Err(TokenError::Expired));
        let skewed = json!({"sub":"a","exp":NOW - 59});
        check(&v, &sign_hs256(&skewed, SECRET), Ok("a"));
        let strict = Verifier {
            leeway_secs: 0,
            ..all_keys()
        };
        check(
            &strict,
            &sign_hs256(&skewed, SECRET),
            Err(TokenError::Expired),
        );
        // Not valid yet, beyond and within the leeway.
        let early = json!({"sub":"a","exp":NOW + 999,"nbf":NOW + 61});
        check(
            &v,
            &sign_hs256(&early, SECRET),
            Err(TokenError::NotYetValid),
        );
        let soon = json!({"sub":"a","exp":NOW + 999,"nbf":NOW + 30});
        check(&v, &sign_hs256(&soon, SECRET), Ok("a"));
        // exp is required unless switched off.
        let forever = json!({"sub":"a"});
        check(&v, &sign_hs256(&forever, SECRET), Err(TokenError::NoExpiry));
        let lax = Verifier {
            require_exp: false,
            ..all_keys()
        };
        check(&lax, &sign_hs256(&forever, SECRET), Ok("a"));
        let bad_exp = json!({"sub":"a","exp":"soon"});
        assert!(matches!(
            v.verify(&sign_hs256(&bad_exp, SECRET), NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_keys_and_algorithms() {
        let v = all_keys();
        let ok = json!({"sub":"alice","exp":NOW + 10});
        check(
            &v,
            &sign_hs256(&ok, b"another-secret-of-16+"),
            Err(TokenError::Signature),
        );
        let other = Verifier::new().es256_pem(OTHER_EC_PUBLIC).unwrap();
        check(&other, &es256(&ok), Err(TokenError::Signature));
        // An algorithm without a key, `none`, and unknown ones are refused.
        let hs_only = Verifier::new().hs256(SECRET).unwrap();
        check(
            &hs_only,
            &rs256(&ok),
            Err(TokenError::Algorithm("RS256".into())),
        );
        let none = format!(
            "{}.{}.",
            b64_encode(br#"{"alg":"none"}"#),
            b64_encode(ok.to_string().as_bytes())
        );
        check(&v, &none, Err(TokenError::Algorithm("none".into())));
        // Key confusion: an HS256 token signed with the RSA public key as the secret.
        let rs_only = Verifier::new().rs256_pem(RSA_PUBLIC).unwrap();
        check(
            &rs_only,
            &sign_hs256(&ok, RSA_PUBLIC.as_bytes()),
            Err(TokenError::Algorithm("HS256".into())),
        );
        // Tampered claims.
        let t = sign_hs256(&ok, SECRET);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64_encode(br#"{"sub":"mallory","exp":1900000000}"#);
        parts[1] = &forged;
        check(&v, &parts.join("."), Err(TokenError::Signature));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert!(v.verify(junk, NOW).is_err(), "{junk}");
        }
        assert_eq!(
            Verifier::new().hs256(b"short").err(),
            Some(KeyError::WeakSecret)
        );
        assert!(Verifier::new().rs256_pem("not a key").is_err());
    }

    #[test]
    fn claims_checks() {
        let v = Verifier {
            issuer: Some("https://issuer".into()),
            audience: Some("stateline".into()),
            ..all_keys()
        };
        let good = json!({"sub":"a","exp":NOW+5,"iss":"https://issuer","aud":["x","stateline"]});
        check(&v, &sign_hs256(&good, SECRET), Ok("a"));
        let bad_iss = json!({"sub":"a","exp":NOW+5,"iss":"evil","aud":"stateline"});
        check(
            &v,
            &sign_hs256(&bad_iss, SECRET),
            Err(TokenError::Claim("iss")),
        );
        let bad_aud = json!({"sub":"a","exp":NOW+5,"iss":"https://issuer","aud":"other"});
        check(
            &v,
            &sign_hs256(&bad_aud, SECRET),
            Err(TokenError::Claim("aud")),
        );
        let c = Claims(
            json!({"sub":42,"roles":["admin"],"role":"x"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(c.text("sub").as_deref(), Some("42"));
        assert!(c.has_role("roles", "admin") && c.has_role("role", "x"));
        assert!(!c.has_role("roles", "x"));
    }
}
