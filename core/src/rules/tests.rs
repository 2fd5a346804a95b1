use super::*;
use crate::key::Pattern;
use crate::token::{sign_hs256, TokenError};
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
    let rs = Rules::from_toml_str("[[rule]]\npattern = \"**\"\nread = \"public\"\n", &Env).unwrap();
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
    let e = s.validate(&json!({"name":1})).unwrap_err().to_string();
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
