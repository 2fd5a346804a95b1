//! The command line: `stateline serve` and its flags, each also read from an environment variable.
//!
//! Owns parsing and validation of the settings, and turning them into the core's [`Config`] and
//! [`Filters`]. Nothing here opens a socket or a file.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use stateline_core::filter::Limit;
use stateline_core::{Config, Filters};

/// Real-time JSON state over HTTP, WebSocket and Server-Sent Events.
#[derive(Debug, Parser)]
#[command(name = "stateline", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start; the size of the serve variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (REST, WebSocket, SSE and /_ws on one port).
    Serve(ServeArgs),
    /// Download a consistent snapshot of a running server's store (`GET /_backup`).
    Backup(BackupArgs),
    /// Replace the store in a data folder with a backup (refused while a server uses the folder).
    Restore(RestoreArgs),
    /// Sign a development token for a rules file's HS256 secret, printed on stdout.
    Token(TokenArgs),
    /// Salvage a damaged store in place: keep what is readable, report what is lost (refused
    /// while a server uses the folder; the damaged file is kept beside the result).
    Repair(RepairArgs),
}

/// `stateline token` flags.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The rules file whose `[auth]` HS256 secret signs the token (`hs256_secret`, or the
    /// variable `hs256_secret_env` names: its bytes exactly as they are, not base64-decoded).
    /// The token also gets the file's `issuer` and `audience` when it sets them.
    #[arg(long, env = "STATELINE_RULES")]
    pub rules: PathBuf,
    /// The `sub` claim: the user, compared with `{sub}` in rule patterns.
    #[arg(long)]
    pub sub: String,
    /// A role (repeat, or comma-separated), put in the rules' roles claim (`roles` by default).
    #[arg(long = "role", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Any other claim, `NAME=VALUE` (repeat); VALUE is read as JSON when it is JSON, else as a
    /// string.
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// How long the token is valid: `30m`, `1h`, `7d` (at most 366 days).
    #[arg(long, default_value = "1h", value_parser = parse_lifetime)]
    pub expires: Duration,
}

impl TokenArgs {
    /// The extra claims, parsed.
    pub fn extra_claims(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let mut m = serde_json::Map::new();
        for c in &self.claims {
            let (k, v) = c
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("--claim {c}: expected NAME=VALUE"))?;
            if matches!(k, "sub" | "exp" | "iat") {
                return Err(format!(
                    "--claim {c}: {k} is set by --sub and --expires, not --claim"
                ));
            }
            let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
            m.insert(k.to_string(), v);
        }
        Ok(m)
    }
}

/// `stateline backup` flags.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Base URL of the running server.
    #[arg(long, env = "STATELINE_URL", default_value = "http://127.0.0.1:8800")]
    pub url: String,
    /// The server's --backup-token.
    #[arg(long, env = "STATELINE_BACKUP_TOKEN")]
    pub token: String,
    /// File to write the snapshot to (written whole or not at all).
    #[arg(long)]
    pub out: PathBuf,
}

/// `stateline restore` flags.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Data folder to restore into (its current store is replaced).
    #[arg(long, env = "STATELINE_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// The backup file (from `stateline backup`).
    #[arg(long)]
    pub from: PathBuf,
}

/// `stateline repair` flags.
#[derive(Debug, Clone, Args)]
pub struct RepairArgs {
    /// Data folder whose store to salvage.
    #[arg(long, env = "STATELINE_DATA", default_value = "./data")]
    pub data: PathBuf,
}

/// Longest duration a server flag takes (about 11 days): far beyond any sensible timeout, and
/// small enough that adding it to a clock never overflows.
const MAX_FLAG_SECS: f64 = 1e6;

/// Parses `500ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_upto(s, MAX_FLAG_SECS)
}

/// Parses a token lifetime: `30m`, `1h`, `7d`, at most 366 days.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    parse_duration_upto(s, 366.0 * 86400.0)
}

fn parse_duration_upto(s: &str, max_secs: f64) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 10s, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !(secs.is_finite() && secs >= 0.001 && secs <= max_secs) {
        return Err(format!(
            "{s:?} is out of range: give at least 1ms and at most {max_secs} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

// A JetStream stream name: no spaces, dots, wildcards or path separators (the server's rule).
fn stream_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a stream name is 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

/// `stateline serve` flags. Every flag has an environment variable (shown in `--help`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (HOST:PORT). Use 0.0.0.0 to accept other machines.
    #[arg(long, env = "STATELINE_ADDR", default_value = "127.0.0.1:8800")]
    pub addr: String,

    /// Folder of the embedded store (one crash-safe redb file, `stateline.redb`). Every write is
    /// on disk before it is acknowledged; keys, revisions, versions and the change log survive
    /// restarts. Created if missing.
    #[arg(long, env = "STATELINE_DATA", default_value = "./data")]
    pub data: PathBuf,

    /// Enables `GET /_backup` (a consistent snapshot of the store) for requests that carry
    /// `Authorization: Bearer <this token>`. Without it the route is off.
    #[arg(long, env = "STATELINE_BACKUP_TOKEN", value_parser = non_empty_secret)]
    pub backup_token: Option<String>,

    /// No disk at all: state lives in memory and is gone when the server stops.
    #[arg(long, env = "STATELINE_MEMORY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub memory: bool,

    /// Run as one node of a cluster: the NATS servers (comma-separated `nats://HOST:PORT`) whose
    /// JetStream orders and stores every change. Any number of nodes started with the same
    /// servers and `--cluster-stream` serve the same keys; a write on one reaches subscribers on
    /// all. JetStream is the store: the node keeps no local disk (`--data` is not used).
    #[arg(long, env = "STATELINE_CLUSTER", value_delimiter = ',', conflicts_with_all = ["data", "memory", "backup_token"])]
    pub cluster: Vec<String>,

    /// The JetStream stream that holds the cluster's state (created by the first node that
    /// starts; its subjects are `<NAME>.k.<key>`). Clusters that share NATS use different names.
    #[arg(long, env = "STATELINE_CLUSTER_STREAM", default_value = "stateline", value_parser = stream_name)]
    pub cluster_stream: String,

    /// How many NATS servers keep each change (1 to 5, at most the servers of the NATS
    /// cluster; 3 survives the loss of one). Set when the stream is created. A write is
    /// acknowledged once JetStream has stored it on a majority of them.
    #[arg(long, env = "STATELINE_CLUSTER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub cluster_replicas: u8,

    /// NATS credentials file (a `.creds` file: user JWT and NKey seed), as `nats --creds`.
    #[arg(long, env = "STATELINE_CLUSTER_CREDS")]
    pub cluster_creds: Option<PathBuf>,

    /// NATS user name (with --cluster-password).
    #[arg(long, env = "STATELINE_CLUSTER_USER", requires = "cluster_password")]
    pub cluster_user: Option<String>,

    /// NATS password (with --cluster-user).
    #[arg(
        long,
        env = "STATELINE_CLUSTER_PASSWORD",
        requires = "cluster_user",
        hide_env_values = true
    )]
    pub cluster_password: Option<String>,

    /// NATS authentication token.
    #[arg(long, env = "STATELINE_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,

    /// Largest request body (and `/_ws` message) in bytes; larger bodies get 413.
    #[arg(long, env = "STATELINE_MAX_BODY", default_value_t = 10 << 20, value_parser = at_least_one)]
    pub max_body: usize,

    /// Deepest JSON nesting accepted in a value; deeper bodies get 400.
    #[arg(long, env = "STATELINE_MAX_DEPTH", default_value_t = 64, value_parser = at_least_one)]
    pub max_depth: usize,

    /// Most JSON values (objects, arrays, strings, numbers, literals) one body or `/_ws` message
    /// may hold; more get 400. A parsed value costs ~25 times its text in memory, so the body cap
    /// alone does not bound it: at the default (262144) one body's tree stays within ~25 MB.
    #[arg(long, env = "STATELINE_MAX_NODES", default_value_t = stateline_core::json::MAX_NODES)]
    pub max_nodes: usize,

    /// Host names this server is reached by (comma-separated; `name` for any port, `name:port`
    /// for one), besides `localhost`, `127.0.0.1`, `[::1]` and the --addr host. With a restricted
    /// --allow-origin, a request whose Origin is its own Host is same-origin only for these
    /// hosts (a DNS name rebound to this server is not).
    #[arg(long, env = "STATELINE_ALLOW_HOST", value_delimiter = ',')]
    pub allow_host: Vec<String>,

    /// Time allowed to receive a request body and answer it; then 503 (ooo's deadline).
    #[arg(long, env = "STATELINE_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub deadline: Duration,

    /// Broadcast frames queued per connection (WebSocket or SSE). A subscriber whose queue is
    /// full is cut off (WebSocket close 4008) so it never slows the others; it resumes with
    /// `?v=`. A WebSocket subscription's waiting frames coalesce into one, so this is reached
    /// by SSE streams, or by composed frames over 64 KiB. Replies to a `/_ws` client's own requests do not count (see --ws-inflight). At
    /// least 1 (a queue of 0 would cut off every subscriber at its first frame).
    #[arg(long, env = "STATELINE_QUEUE", default_value_t = 256, value_parser = at_least_one)]
    pub queue: usize,

    /// Bytes a client socket may hold that the kernel has not sent yet (Linux
    /// `TCP_NOTSENT_LOWAT`); past it the socket is not writable and frames wait in the server,
    /// where those of one subscription coalesce into one (docs/protocol.md, "Coalescing"). Without it the
    /// kernel takes megabytes of a slow subscriber's frames, each one staler than the last.
    /// 16 KiB keeps a socket busy at full speed on a fast link and adds one write wake-up
    /// per 16 KiB to large HTTP responses. 0 leaves the kernel's default (no limit).
    #[arg(long, env = "STATELINE_UNSENT", default_value_t = 16 * 1024)]
    pub unsent: u32,

    /// Requests one `/_ws` connection may have in flight (read, reply not yet sent). At the
    /// limit the server stops reading that socket until replies go out: TCP backpressure on a
    /// pipelining client, so every request it sent is answered (an acknowledgement is never
    /// dropped) and its replies take bounded memory. Half the default `--queue`, so a client's
    /// own writes to keys it watches cannot fill its queue by themselves.
    #[arg(long, env = "STATELINE_WS_INFLIGHT", default_value_t = 128)]
    pub ws_inflight: usize,

    /// Compress WebSocket messages (`permessage-deflate`, RFC 7692) for clients that offer it,
    /// as browsers do. Off by default: it trades server CPU for bandwidth, which pays on slow or
    /// metered links and for large values, not on a LAN. Messages under 128 bytes and those
    /// that do not shrink go out as they are; the server compresses each message from a fresh
    /// state, so it keeps no compressor per connection. A client that keeps its own context
    /// between messages (browsers do) costs 43,296 B of inflate state from its first
    /// compressed message on. A message may inflate to at most --max-body (then 1009).
    #[arg(long, env = "STATELINE_WS_DEFLATE")]
    pub ws_deflate: bool,

    /// Time a WebSocket peer has to finish a message once its first frame has started (the
    /// WebSocket form of a body timeout; the same default as --deadline for HTTP bodies). A peer
    /// that has not sent the final fragment by then is closed with 1008, so an unfinished
    /// message cannot pin its buffer for as long as the peer keeps pinging.
    #[arg(long, env = "STATELINE_MESSAGE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub message_timeout: Duration,

    /// Open client connections (HTTP, WebSocket and SSE) at most. A connection beyond it is
    /// answered at once with 503 and `Retry-After`, then closed, instead of waiting in the
    /// listen queue. Default: the open-file limit (raised to its hard limit at start) minus a
    /// reserve for the store, the listener and the 503 answers themselves (like Redis'
    /// `maxclients`).
    #[arg(long, env = "STATELINE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Time a client may take to send a request's headers (and an idle keep-alive connection to
    /// start its next request) before the connection is closed: the slowloris guard.
    #[arg(long, env = "STATELINE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Ping every WebSocket peer this often; one that sends nothing back (not even a pong)
    /// for a whole interval after a ping is closed.
    #[arg(long, env = "STATELINE_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// TTL of a key written on `/_ws` with `"lease": true`. The server renews it while the
    /// connection lives (when half of it is left) and deletes the key when the connection ends;
    /// after a crash the key expires by itself at most this long after the server stopped.
    #[arg(long, env = "STATELINE_LEASE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Longest time one write to a socket may take before the peer is dropped.
    #[arg(long, env = "STATELINE_WRITE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// SSE keep-alive comment interval.
    #[arg(long, env = "STATELINE_SSE_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub sse_keepalive: Duration,

    /// Changes kept in the change log for resume (`?v=`, `Last-Event-ID`).
    #[arg(long, env = "STATELINE_LOG_ENTRIES", default_value_t = 100_000)]
    pub log_entries: usize,

    /// Bytes of keys and values kept in the change log for resume.
    #[arg(long, env = "STATELINE_LOG_BYTES", default_value_t = 64 << 20)]
    pub log_bytes: usize,

    /// Versions of each key kept for `GET /<key>?history=N`, its current value included (also
    /// the largest N; 0 turns key history off). A few dozen answer "what did this hold lately";
    /// a hot key must not keep thousands. Kept on disk with the store; the current value is the
    /// store's own, so a key written once costs no history.
    #[arg(long, env = "STATELINE_HISTORY", default_value_t = stateline_core::history::DEFAULT_KEEP)]
    pub history: usize,

    /// Bytes of earlier values and deletes kept for every key's history together (the oldest
    /// versions of the store go first beyond it; a current value is never dropped): deleted keys keep their history, so a per-key bound alone would
    /// grow without end.
    #[arg(long, env = "STATELINE_HISTORY_BYTES", default_value_t = stateline_core::history::DEFAULT_MAX_BYTES)]
    pub history_bytes: usize,

    /// Idempotent writes: ids (`rid` on /_ws, the `Idempotency-Key` header) remembered with
    /// their answers, so a client's retry is answered instead of applied again (0 turns this
    /// off). A repeat of an id older than the newest N is applied as a new write. Kept on disk
    /// with the store.
    #[arg(long, env = "STATELINE_RECEIPTS", default_value_t = stateline_core::receipts::DEFAULT_KEEP)]
    pub receipts: usize,

    /// Bytes kept for all remembered ids and their answers together (the oldest go first).
    #[arg(long, env = "STATELINE_RECEIPTS_BYTES", default_value_t = stateline_core::receipts::DEFAULT_MAX_BYTES)]
    pub receipts_bytes: usize,

    /// Allowed origins (comma-separated) for CORS and WebSocket handshakes; `*` allows any.
    #[arg(
        long,
        env = "STATELINE_ALLOW_ORIGIN",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allow_origin: Vec<String>,

    /// Time given to open requests and sockets to finish after SIGINT/SIGTERM.
    #[arg(long, env = "STATELINE_DRAIN", default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Static mode (ooo): only paths with a filter (see --open, --limit) can be read or written.
    #[arg(long = "static", env = "STATELINE_STATIC", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub static_mode: bool,

    /// Open a glob for reads and writes in static mode (repeat, or comma-separated).
    #[arg(long = "open", env = "STATELINE_OPEN", value_delimiter = ',')]
    pub open: Vec<String>,

    /// Keep at most N items under a glob, newest first: `logs/*=100` (repeat, or
    /// comma-separated); N is at least 1. Older items are deleted as new ones are written. (A
    /// limit by age is set in a rules file: `limit = { max_age_secs = .. }`.)
    #[arg(long = "limit", env = "STATELINE_LIMIT", value_delimiter = ',')]
    pub limit: Vec<String>,

    /// Access rules and token keys: a TOML file (or JSON, by its `.json` extension). See
    /// `examples/rules.toml` and the README's "Access control" section. Without it every route
    /// is open to everyone.
    #[arg(long = "rules", env = "STATELINE_RULES")]
    pub rules: Option<PathBuf>,
}

/// A count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// A secret flag: empty would mean "anyone" or "off" depending on who reads it, so neither.
fn non_empty_secret(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err(
            "is empty; give a long random token, or leave the flag out to keep the route off"
                .into(),
        )
    } else {
        Ok(s.to_string())
    }
}

/// Reads what a rules file refers to: environment variables, and files relative to the rules
/// file's folder.
struct FromHost<'a> {
    dir: &'a std::path::Path,
}

impl stateline_core::rules::Resolve for FromHost<'_> {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &str) -> Result<String, String> {
        let p = self.dir.join(path);
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    }
}

/// Loads a rules file (TOML, or JSON when it ends in `.json`).
pub fn load_rules(path: &std::path::Path) -> Result<stateline_core::Rules, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--rules {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    let env = FromHost { dir };
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let r = if json {
        stateline_core::Rules::from_json_str(&text, &env)
    } else {
        stateline_core::Rules::from_toml_str(&text, &env)
    };
    r.map_err(|e| format!("--rules {}: {e}", path.display()))
}

impl ServeArgs {
    /// Defaults, as `stateline serve --memory` would have them (for tests and embedding).
    pub fn memory() -> ServeArgs {
        let cli = Cli::parse_from(["stateline", "serve", "--memory"]);
        match cli.command {
            Command::Serve(a) => a,
            _ => unreachable!("parsed from a serve command line"),
        }
    }

    /// The core's limits.
    pub fn core_config(&self) -> Config {
        Config {
            max_body: self.max_body,
            max_depth: self.max_depth,
            log_entries: self.log_entries,
            log_bytes: self.log_bytes,
            cors_origins: self.allow_origin.clone(),
            max_nodes: self.max_nodes,
            allowed_hosts: self.served_hosts(),
            history: stateline_core::history::Limits {
                keep: self.history,
                max_bytes: self.history_bytes,
            },
            receipts: stateline_core::receipts::Limits {
                keep: self.receipts,
                max_bytes: self.receipts_bytes,
            },
            ..Config::default()
        }
    }

    /// `--allow-host`, and the host of `--addr` unless it is a wildcard (0.0.0.0, [::]).
    fn served_hosts(&self) -> Vec<String> {
        let mut hosts = self.allow_host.clone();
        if let Ok(a) = self.addr.parse::<std::net::SocketAddr>() {
            if !a.ip().is_unspecified() {
                hosts.push(match a.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                });
            }
        }
        hosts
    }

    /// The filters the flags ask for.
    pub fn filters(&self) -> Result<Filters, String> {
        let mut f = Filters::new();
        self.apply_filters(&mut f)?;
        Ok(f)
    }

    /// Adds what the flags ask for (`--static`, `--open`, `--limit`, `--rules`) to filters
    /// registered through the Rust API.
    pub fn apply_filters(&self, f: &mut Filters) -> Result<(), String> {
        if self.static_mode {
            f.set_static(true);
        }
        for p in &self.open {
            f.open(p).map_err(|e| format!("--open {p}: {e}"))?;
        }
        for l in &self.limit {
            let (p, n) = l
                .split_once('=')
                .ok_or_else(|| format!("--limit {l}: expected GLOB=COUNT, like logs/*=100"))?;
            if !p.split('/').any(|seg| seg == "*") {
                return Err(format!(
                    "--limit {l}: {p:?} is not a glob; a limit keeps the newest COUNT items under a glob, like {p}/*={n}"
                ));
            }
            let count: usize = match n.parse() {
                Ok(0) => {
                    return Err(format!(
                        "--limit {l}: the count must be at least 1 (0 would delete every item as it is written)"
                    ))
                }
                Ok(c) => c,
                Err(_) => {
                    return Err(format!(
                        "--limit {l}: {n:?} is not a count (a whole number of items)"
                    ))
                }
            };
            f.limit(
                p,
                Limit {
                    count: Some(count),
                    max_age_ns: None,
                },
            )
            .map_err(|e| format!("--limit {l}: {e}"))?;
            // In static mode a limited glob is also a route.
            if self.static_mode {
                f.open(p).map_err(|e| format!("--limit {l}: {e}"))?;
            }
        }
        if let Some(path) = &self.rules {
            let rules = load_rules(path)?;
            f.set_rules(rules)
                .map_err(|e| format!("--rules {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("at least 1ms"));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert!(parse_duration("30d").is_err());
        assert_eq!(parse_lifetime("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_lifetime("400d").is_err());
    }

    fn serve_args(flags: &[&str]) -> Result<ServeArgs, String> {
        let argv = ["stateline", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Serve(a) => Ok(a),
            _ => unreachable!("parsed a serve command line"),
        }
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        // Each refused with a message naming the fix.
        let cases: &[(&[&str], &str)] = &[
            (&["--backup-token", ""], "is empty"),
            (&["--queue", "0"], "at least 1"),
            (&["--max-body", "0"], "at least 1"),
            (&["--drain", "0s"], "at least 1ms"),
        ];
        for (flags, needle) in cases {
            let e = serve_args(flags).unwrap_err();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
        let filters: &[(&[&str], &str)] = &[
            (&["--limit", "logs=3"], "not a glob"),
            (&["--limit", "logs/*=0"], "at least 1"),
            (&["--limit", "logs/*=x"], "not a count"),
        ];
        for (flags, needle) in filters {
            let e = serve_args(flags).unwrap().filters().unwrap_err();
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
    }

    #[test]
    fn token_claims() {
        let cli = Cli::parse_from([
            "stateline",
            "token",
            "--rules",
            "r.toml",
            "--sub",
            "alice",
            "--claim",
            "n=3",
            "--claim",
            "team=blue",
        ]);
        let Command::Token(t) = cli.command else {
            panic!("token")
        };
        let m = t.extra_claims().unwrap();
        assert_eq!(m["n"], serde_json::json!(3));
        assert_eq!(m["team"], serde_json::json!("blue"));
        assert_eq!(t.expires, Duration::from_secs(3600));
        let bad = Cli::parse_from([
            "stateline",
            "token",
            "--rules",
            "r",
            "--sub",
            "a",
            "--claim",
            "exp=1",
        ]);
        let Command::Token(t) = bad.command else {
            panic!("token")
        };
        assert!(t.extra_claims().is_err());
    }

    #[test]
    fn flags_make_filters() {
        let cli = Cli::parse_from([
            "stateline",
            "serve",
            "--memory",
            "--static",
            "--open",
            "things/*",
            "--limit",
            "limited/*=3",
        ]);
        let Command::Serve(a) = cli.command else {
            panic!("serve")
        };
        let f = a.filters().unwrap();
        assert!(f.is_static());
        assert!(f.limit_for("limited/x").is_some());
        let bad = Cli::parse_from(["stateline", "serve", "--limit", "x"]);
        let Command::Serve(a) = bad.command else {
            panic!("serve")
        };
        assert!(a.filters().is_err());
    }
}
