//! What the fuzz targets share: the engine they run requests and messages against (access rules
//! with every kind of grant, a schema, a TTL and a limit, so the fuzzer reaches the refusals as
//! well as the writes), the secret the seeds' tokens are signed with, and the fixed clock.
//!
//! Every input starts from a new engine: a crash found after a million runs is reproduced by
//! running its one input again.

use std::sync::OnceLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use stateline_core::rules::{Inline, Rules};
use stateline_core::{Config, Engine, Filters, Tick};

/// The HS256 secret of [`RULES`]: seed tokens are signed with it (`Authorization: Bearer ..`,
/// `/_ws` `auth`), so the fuzzer starts from identities that verify.
pub const SECRET: &str = "stateline-fuzz-secret-0123456789";

/// The wall clock of every input: 2023-11-14T22:13:20Z. Seed tokens expire in 2100.
pub const NOW_SECS: i64 = 1_700_000_000;

/// The access rules of the fuzzed engine.
pub const RULES: &str = r#"
[auth]
hs256_secret = "stateline-fuzz-secret-0123456789"
roles_claim = "roles"

[[rule]]
pattern = "**"
read = "public"
write = "public"
delete = "public"

[[rule]]
pattern = "private/{sub}/**"
read = "owner"
write = "owner"
delete = "owner"

[[rule]]
pattern = "admin/**"
read = ["role:admin"]
write = "role:admin"

[[rule]]
pattern = "config/*"
read = "public"
read_only = true

[[rule]]
pattern = "members/*"
read = "token"
write = "token"
delete = "token"
schema = { type = "object", required = ["name"], properties = { name = { type = "string" } } }
ttl_secs = 60
limit = { count = 3 }
"#;

/// The tick of the `n`th request of an input (a millisecond apart).
pub fn tick(n: usize) -> Tick {
    Tick::from_wall(NOW_SECS * 1_000_000_000 + n as i64 * 1_000_000)
}

/// A new engine with [`RULES`] and small limits (a body of at most 64 KiB, 1000 values).
pub fn engine() -> Engine {
    static PARSED: OnceLock<Rules> = OnceLock::new();
    let rules = PARSED
        .get_or_init(|| Rules::from_toml_str(RULES, &Inline).expect("the fuzz rules parse"))
        .clone();
    let mut filters = Filters::new();
    filters.set_rules(rules).expect("the fuzz rules apply");
    Engine::new(
        tick(0),
        Config {
            max_body: 64 << 10,
            max_nodes: 1000,
            max_keys_page: 50,
            ..Config::default()
        },
        filters,
    )
}

/// A compact JWS (`header.claims.signature`) over these exact bytes, signed with [`SECRET`]:
/// unlike `token::sign_hs256`, the header and claims need not be JSON.
pub fn sign_raw(header: &[u8], claims: &[u8]) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signed = format!("{}.{}", b64(header), b64(claims));
    let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    format!("{signed}.{}", b64(&mac.finalize().into_bytes()))
}
