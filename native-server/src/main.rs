//! The `stateline` binary: parses the command line, sets up logging, runs the server.

use std::process::ExitCode;

use clap::Parser;
use stateline_server::{serve, shutdown_signal, Cli, Command};
use tracing_subscriber::EnvFilter;

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
            tracing::error!(error = %e, "stateline failed");
            eprintln!("stateline: {e}");
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
        let client = stateline_server::client::Client::new(&b.url).map_err(|e| e.to_string())?;
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
