//! The `stateline` binary: parses the command line, sets up logging, runs the server.

use std::process::ExitCode;

use clap::Parser;
use stateline_server::{serve, shutdown_signal, Cli, Command};
use tracing_subscriber::EnvFilter;

// jemalloc, not the system allocator: a durable write's memory is allocated on a request thread
// and freed on the commit thread, and glibc's allocator made that free wait for the lock of the
// request thread's arena, holding up the group commit behind it (128 durable writers: +8% to
// +32% writes/s and a lower p99 in interleaved runs, docs/BENCHMARKS.md "An allocator for the
// commit thread"). Its settings are compiled in from .cargo/config.toml. Only the binary sets
// it: a program that embeds the server keeps its own.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Structured logs (key=value fields) to stderr; level from STATELINE_LOG or RUST_LOG.
    let filter = EnvFilter::try_from_env("STATELINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Restore(r) => {
            return match stateline_disk::Disk::restore(&r.from, &r.data) {
                Ok(keys) => {
                    eprintln!(
                        "restored {keys} keys from {} into {}",
                        r.from.display(),
                        r.data.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stateline restore: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Backup(b) => return backup(b),
        Command::Token(t) => return token(t),
        Command::Repair(r) => return repair(&r.data),
    };
    // Before any socket is opened: the limit sizes the default --max-connections.
    let fds = stateline_server::raise_fd_limit();
    tracing::debug!(open_files = fds, "open-file limit");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        serve(args, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, through the log (which goes to stderr like everything else the server says).
            tracing::error!("stateline cannot run: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `stateline token`: signs a development token for a rules file's HS256 secret.
fn token(t: stateline_server::config::TokenArgs) -> ExitCode {
    let result = (|| {
        let rules = stateline_server::config::load_rules(&t.rules)?;
        let extra = t.extra_claims()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs() as i64;
        let ttl = t.expires.as_secs().max(1) as i64;
        rules.mint(&t.sub, &t.roles, extra, now, ttl)
    })();
    match result {
        Ok(token) => {
            println!("{token}");
            eprintln!(
                "signed for sub={:?}{}, valid for {}s (send it as Authorization: Bearer <token>)",
                t.sub,
                if t.roles.is_empty() {
                    String::new()
                } else {
                    format!(" roles={:?}", t.roles)
                },
                t.expires.as_secs()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stateline token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `stateline repair`: salvages a damaged store in place and reports what was lost.
fn repair(data: &std::path::Path) -> ExitCode {
    // Reading a damaged file may make redb panic; repair catches that and reads around it, so
    // the panic messages would only be noise.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = stateline_disk::repair(data);
    std::panic::set_hook(hook);
    match r {
        Ok(report) => {
            eprintln!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stateline repair: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `stateline backup`: downloads `GET /_backup` and writes it atomically to `--out`.
fn backup(b: stateline_server::config::BackupArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stateline backup: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<usize, String> = rt.block_on(async {
        let client = stateline_client::Client::new(&b.url).map_err(|e| e.to_string())?;
        let auth = format!("Bearer {}", b.token);
        let r = client
            .request(
                http::Method::GET,
                "/_backup",
                &[("authorization", &auth)],
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !r.status.is_success() {
            return Err(format!(
                "{} answered {}: {}",
                b.url,
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let tmp = b.out.with_extension("part");
        std::fs::write(&tmp, &r.body).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &b.out).map_err(|e| format!("{}: {e}", b.out.display()))?;
        Ok(r.body.len())
    });
    match result {
        Ok(n) => {
            eprintln!("wrote {} ({n} bytes)", b.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stateline backup: {e}");
            ExitCode::FAILURE
        }
    }
}
