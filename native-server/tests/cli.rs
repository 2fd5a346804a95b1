//! The command line as a new user meets it: `stateline token`, flags refused with the fix named,
//! the start-up summary, and a fatal error said once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stateline_core::rules::{Identity, Resolve};

const SECRET: &str = "cli-test-secret-0123456789";

fn stateline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stateline"));
    c.env("STATELINE_LOG", "info").env_remove("STATELINE_RULES");
    c
}

/// A folder of this test's own, removed when dropped.
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("stateline-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rules_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("rules.toml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Env;
impl Resolve for Env {
    fn env(&self, name: &str) -> Option<String> {
        (name == "CLI_SECRET").then(|| SECRET.to_string())
    }
    fn file(&self, path: &str) -> Result<String, String> {
        Err(format!("no file {path}"))
    }
}

const RULES: &str = r#"
[auth]
hs256_secret_env = "CLI_SECRET"
issuer = "tests"

[[rule]]
pattern = "admin/**"
read = "role:admin"
write = "role:admin"

[[rule]]
pattern = "**"
read = "public"
"#;

#[test]
fn token_signs_what_the_rules_accept() {
    let dir = TempDir::new("token");
    let rules = rules_file(dir.path(), RULES);
    let out = stateline()
        .args(["token", "--rules"])
        .arg(&rules)
        .args(["--sub", "alice", "--role", "admin", "--expires", "2h"])
        .args(["--claim", "team=blue"])
        .env("CLI_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "one JWT on stdout: {token}");
    assert!(stderr.contains("sub=\"alice\""), "{stderr}");
    // The same file, read the way the server reads it, accepts the token for alice, admin.
    let r = stateline_core::Rules::from_toml_str(RULES, &Env).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    match r.identify(Some(token), now) {
        Identity::User(c) => {
            assert_eq!(c.text("sub").as_deref(), Some("alice"));
            assert!(c.has_role("roles", "admin"));
            assert_eq!(c.text("iss").as_deref(), Some("tests"), "the file's issuer");
            assert_eq!(c.text("team").as_deref(), Some("blue"));
            let exp = c.exp().unwrap();
            assert!((now + 7000..=now + 7300).contains(&exp), "2h: {exp}");
        }
        other => panic!("refused: {other:?}"),
    }
    // Without the secret's variable: a clear error, no token.
    let out = stateline()
        .args(["token", "--rules"])
        .arg(&rules)
        .args(["--sub", "alice"])
        .env_remove("CLI_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("CLI_SECRET"), "{e}");
}

#[test]
fn bad_flags_are_refused_with_the_fix() {
    for (flags, needle) in [
        (&["--backup-token", ""][..], "is empty"),
        (&["--queue", "0"][..], "at least 1"),
        (&["--drain", "0s"][..], "at least 1ms"),
        (&["--limit", "logs=3"][..], "not a glob"),
        (&["--limit", "logs/*=0"][..], "at least 1"),
    ] {
        let out = stateline()
            .args(["serve", "--memory", "--addr", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(e.contains(needle), "{flags:?}: {e}");
    }
}

#[test]
fn a_fatal_error_is_said_once() {
    // Port 1 on a non-local address: binding fails at once.
    let out = stateline()
        .args(["serve", "--memory", "--addr", "192.0.2.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.matches("cannot listen on").count(), 1, "{e}");
}

#[test]
fn start_up_says_what_is_on_and_warns_on_an_empty_rules_file() {
    let dir = TempDir::new("empty-rules");
    let rules = rules_file(dir.path(), "# no rules yet\n");
    let mut child = stateline()
        .args(["serve", "--memory", "--addr", "127.0.0.1:0", "--rules"])
        .arg(&rules)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while Instant::now() < deadline && !seen.contains("listening") {
        match lines.next() {
            Some(Ok(l)) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("settings"), "{seen}");
    assert!(seen.contains("(0 rules)"), "{seen}");
    assert!(seen.contains("backups"), "{seen}");
    assert!(seen.contains("has no [[rule]]"), "{seen}");
}
