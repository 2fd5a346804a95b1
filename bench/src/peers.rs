//! Starting the systems under test on 127.0.0.1 (and stopping exactly the processes started).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A system the benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// Stateline's native server, in memory (`--memory`).
    Stateline,
    /// Stateline's native server with its durable embedded store (`--data`).
    StatelineDurable,
    /// Redis, no persistence (`--save "" --appendonly no`).
    Redis,
    /// Redis with `appendonly yes`, `appendfsync always`.
    RedisAof,
    /// NATS core (no JetStream, no persistence).
    Nats,
    /// etcd (WAL fsync on every write; its only mode).
    Etcd,
    /// Stateline in cluster mode: one node on one JetStream server, 1 replica (`crate::cluster`).
    Cluster1,
    /// Stateline in cluster mode: three nodes, each on its own server of a 3-server JetStream
    /// cluster, 3 replicas (`crate::cluster`).
    Cluster3,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Stateline => "stateline",
            System::StatelineDurable => "stateline-durable",
            System::Redis => "redis",
            System::RedisAof => "redis-aof-always",
            System::Nats => "nats",
            System::Etcd => "etcd",
            System::Cluster1 => "stateline-cluster-1",
            System::Cluster3 => "stateline-cluster-3",
        }
    }

    /// How the system keeps data, stated next to every number.
    pub fn durability(self) -> &'static str {
        match self {
            System::Stateline => "in memory (--memory)",
            System::StatelineDurable => {
                "write-ahead log fsync before every acknowledgement (group commit), redb checkpoints"
            }
            System::Redis => "in memory (save \"\", appendonly no)",
            System::RedisAof => "AOF, appendfsync always",
            System::Nats => "core NATS, no persistence",
            System::Etcd => "WAL fsync per write (etcd's only mode)",
            System::Cluster1 => {
                "1 node on 1 JetStream server, 1 replica (file store; fsync every 2 min, NATS's default sync_interval)"
            }
            System::Cluster3 => {
                "3 nodes on 3 JetStream servers, 3 replicas (acknowledged once a majority stored it; file store, fsync every 2 min)"
            }
        }
    }
}

/// How long a stopped Stateline server may take to exit on its own: its drain (`--drain 1s`)
/// and the store's close, with room to spare.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A started system.
pub struct Running {
    pub system: System,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    dir: PathBuf,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the Stateline binary is: `STATELINE_BIN`, else the workspace's release build.
pub fn stateline_bin() -> PathBuf {
    std::env::var_os("STATELINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/stateline")
        })
}

pub async fn start(system: System, tag: &str) -> Result<Running, String> {
    start_with(system, tag, &[]).await
}

/// [`start`] with more command-line arguments for the server.
pub async fn start_with(system: System, tag: &str, extra: &[&str]) -> Result<Running, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())?;
    let dir = std::env::temp_dir().join(format!(
        "stateline-bench-{}-{}-{tag}",
        std::process::id(),
        system.name()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let d = dir.to_string_lossy().to_string();
    let mut cmd = match system {
        System::Stateline | System::StatelineDurable => {
            let mut c = Command::new(stateline_bin());
            // A stop gives open connections 1 s, not the default 10 s (see `Running::stop`).
            c.arg("serve").arg("--addr").arg(addr.to_string());
            c.args(["--drain", "1s"]);
            if system == System::Stateline {
                c.arg("--memory");
            } else {
                c.arg("--data").arg(&d);
            }
            c.env("RUST_LOG", "warn");
            c
        }
        System::Cluster1 | System::Cluster3 => {
            return Err(format!(
                "{}: started by cluster::Deployment, not as one process",
                system.name()
            ))
        }
        System::Redis | System::RedisAof => {
            let mut c = Command::new("redis-server");
            c.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ]);
            c.args(["--maxclients", "15000", "--dir", &d]);
            if system == System::RedisAof {
                c.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                c.args(["--appendonly", "no"]);
            }
            c
        }
        System::Nats => {
            let mut c = Command::new("nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            c
        }
        System::Etcd => {
            let peer = free_port().map_err(|e| e.to_string())?;
            let mut c = Command::new("etcd");
            c.args(["--name", "bench", "--data-dir", &d]);
            c.args([
                "--listen-client-urls",
                &format!("http://{addr}"),
                "--advertise-client-urls",
                &format!("http://{addr}"),
            ]);
            c.args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")]);
            c.args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ]);
            c.args([
                "--initial-cluster",
                &format!("bench=http://127.0.0.1:{peer}"),
                "--log-level",
                "error",
            ]);
            c
        }
    };
    cmd.args(extra);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        format!(
            "starting {}: {e} (is it installed? scripts/bench.sh installs the peers)",
            system.name()
        )
    })?;
    let pid = child.id().ok_or("no pid")?;
    let running = Running {
        system,
        addr,
        pid,
        child,
        dir,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "{} did not listen on {addr} within 10 s",
        system.name()
    ))
}

impl Running {
    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Stops the process this run started (by its handle) and removes its data directory.
    /// Stateline gets SIGTERM first and up to [`STOP_GRACE`] to exit as it would in service
    /// (its store closed, and a build made with `-Cprofile-generate` writes its profile then:
    /// scripts/build-pgo.sh trains on these runs); then, and every peer at once, SIGKILL.
    pub async fn stop(mut self) {
        if matches!(self.system, System::Stateline | System::StatelineDurable) {
            // The shell's builtin `kill`, so no procps package is needed.
            let term = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -TERM {}", self.pid))
                .status()
                .await;
            if term.is_ok_and(|s| s.success()) {
                let _ = tokio::time::timeout(STOP_GRACE, self.child.wait()).await;
            }
        }
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
