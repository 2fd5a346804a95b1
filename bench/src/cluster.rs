//! The cluster scenario: Stateline as one process (`--memory`, `--data`) against cluster mode
//! (`--cluster`): one node on one JetStream server with 1 replica, and three nodes, each on its
//! own server of a 3-server JetStream cluster, with 3 replicas. Every process is started here on
//! 127.0.0.1 (free ports, a fresh folder) and stopped through its own handle.
//!
//! The NATS servers for cluster mode need JetStream's atomic batch publish (nats-server 2.12 or
//! newer): `NATS_SERVER_BIN`, else `.tools/nats/bin/nats-server` (what `scripts/ensure-nats.sh`
//! installs), else `nats-server` on PATH. The NATS peer of the other scenarios keeps using the
//! `nats-server` on PATH.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::peers::{stateline_bin, System};
use crate::proto::Http;

/// The JetStream stream every node of a deployment serves.
const STREAM: &str = "bench";

/// The nats-server binary for cluster mode (see the module docs).
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("nats-server")
}

/// One NATS server of a deployment.
struct Nats {
    child: Child,
    url: String,
}

/// A Stateline process of a deployment.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// Stateline as one process or as a cluster, with the NATS servers it needs.
pub struct Deployment {
    pub system: System,
    dir: PathBuf,
    nats: Vec<Nats>,
    nodes: Vec<Node>,
    replicas: u8,
    // Data folder of a `--data` process (kept across its restart).
    data: Option<PathBuf>,
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `n` distinct free ports (all bound at once, so none is given twice).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(io))
        .collect()
}

fn addr_on(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `GET path` on a fresh connection; the status, or None if nothing answered.
async fn get_status(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut h = Http::connect(addr).await.ok()?;
    tokio::time::timeout(
        Duration::from_secs(2),
        h.request("GET", path, "text/plain", b""),
    )
    .await
    .ok()?
    .ok()
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Polls `GET /_health` until it answers 200 (every 5 ms, at most `within`); returns how long
/// that took from `since`.
async fn healthy(
    addr: SocketAddr,
    since: Instant,
    within: Duration,
    child: &mut Child,
) -> Result<Duration, String> {
    let deadline = since + within;
    let mut conn: Option<Http> = None;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the process exited ({status})"));
        }
        if conn.is_none() {
            conn = Http::connect(addr).await.ok();
        }
        if let Some(h) = conn.as_mut() {
            match tokio::time::timeout(
                Duration::from_secs(2),
                h.request_status("GET", "/_health", "text/plain", b""),
            )
            .await
            {
                Ok(Ok(200)) => return Ok(since.elapsed()),
                Ok(Ok(_)) => {}
                _ => conn = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("/_health not 200 within {} s", within.as_secs()))
}

/// The `ms=` field of the last log line that contains `what` (the node's own measure).
fn logged_ms(log: &Path, what: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains(what))?;
    let at = line.find(" ms=")? + 4;
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// CPU time (user + system, s) a process has used, from `/proc/<pid>/stat` (0 if unreadable).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks()
}

// Clock ticks per second of /proc's CPU times (getconf CLK_TCK; 100 on Linux).
fn clock_ticks() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl Deployment {
    /// Starts `system` (stateline, stateline-durable, stateline-cluster-1 or -3) and returns once
    /// every node answers `/_health` with 200.
    pub async fn start(system: System, tag: &str) -> Result<Deployment, String> {
        let dir = std::env::temp_dir().join(format!(
            "stateline-bench-{}-{}-{tag}",
            std::process::id(),
            system.name()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let (servers, replicas) = match system {
            System::Stateline | System::StatelineDurable => (0, 0),
            System::Cluster1 => (1, 1),
            System::Cluster3 => (3, 3),
            other => return Err(format!("{}: not a Stateline deployment", other.name())),
        };
        let mut d = Deployment {
            system,
            dir,
            nats: Vec::new(),
            nodes: Vec::new(),
            replicas,
            data: None,
        };
        if servers > 0 {
            // A port found free may be taken by another process before the server binds it:
            // then the whole NATS cluster starts again on new ports.
            let mut attempt = 1;
            while let Err(e) = d.start_nats(servers).await {
                for n in &mut d.nats {
                    let _ = n.child.kill().await;
                }
                d.nats.clear();
                if attempt == 3 {
                    return Err(e);
                }
                eprintln!("   NATS did not start ({e}); again on other ports");
                attempt += 1;
            }
        }
        if system == System::StatelineDurable {
            let data = d.dir.join("data");
            std::fs::create_dir_all(&data).map_err(io)?;
            d.data = Some(data);
        }
        // Node i on NATS server i: one node per server, as one would run one of each per machine.
        for i in 0..servers.max(1) {
            let node = d.spawn_node(i, &format!("node{i}")).await?;
            d.nodes.push(node);
        }
        for i in 0..d.nodes.len() {
            let n = &mut d.nodes[i];
            healthy(
                n.addr,
                Instant::now(),
                Duration::from_secs(60),
                &mut n.child,
            )
            .await
            .map_err(|e| format!("{} node {i}: {e}\n{}", system.name(), tail(&n.log)))?;
        }
        Ok(d)
    }

    /// The nodes' HTTP addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    async fn start_nats(&mut self, n: usize) -> Result<(), String> {
        let bin = nats_server_bin();
        let free = free_ports(3 * n)?;
        let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|p| (p[0], p[1], p[2])).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats://127.0.0.1:{route}"))
            .collect();
        for (i, &(client, route, monitor)) in ports.iter().enumerate() {
            let store = self.dir.join(format!("js{i}"));
            let _ = std::fs::remove_dir_all(&store);
            let log = self.dir.join(format!("nats{i}.log"));
            let mut c = Command::new(&bin);
            c.args(["-a", "127.0.0.1", "-p", &client.to_string()]);
            c.args(["-m", &monitor.to_string(), "-js", "-sd"]);
            c.arg(&store);
            c.args(["-n", &format!("n{i}")]);
            if n > 1 {
                c.args(["--cluster_name", "bench"]);
                c.args(["--cluster", &format!("nats://127.0.0.1:{route}")]);
                c.args(["--routes", &routes.join(",")]);
            }
            let child = spawn_logged(&mut c, &log).map_err(|e| {
                format!(
                    "starting {} (nats-server 2.12 or newer with JetStream; scripts/bench.sh installs it): {e}",
                    bin.display()
                )
            })?;
            self.nats.push(Nats {
                child,
                url: format!("nats://127.0.0.1:{client}"),
            });
        }
        // Ready when every server's /healthz is 200 (JetStream up; for a cluster, in contact
        // with its meta leader) and, for a cluster, /jsz names the meta leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, &(_, _, monitor)) in ports.iter().enumerate() {
            let m = addr_on(monitor);
            loop {
                for (j, n) in self.nats.iter_mut().enumerate() {
                    if let Ok(Some(status)) = n.child.try_wait() {
                        return Err(format!(
                            "nats-server n{j} exited ({status}):\n{}",
                            tail(&self.dir.join(format!("nats{j}.log")))
                        ));
                    }
                }
                let ok = matches!(get_status(m, "/healthz").await, Some((200, _)))
                    && (n == 1
                        || get_status(m, "/jsz").await.is_some_and(|(s, b)| {
                            let b: String = String::from_utf8_lossy(&b)
                                .chars()
                                .filter(|c| !c.is_whitespace())
                                .collect();
                            s == 200 && b.contains("\"leader\":\"n")
                        }));
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(self.dir.join(format!("nats{i}.log")))
                        .unwrap_or_default();
                    let why: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("[ERR]") || l.contains("[FTL]"))
                        .take(5)
                        .collect();
                    return Err(format!(
                        "nats-server n{i}: JetStream not ready within 30 s:\n{}",
                        why.join("\n")
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Spawns a Stateline process: a cluster node on NATS server `i % servers`, or the single
    /// process. Does not wait for it.
    async fn spawn_node(&self, i: usize, name: &str) -> Result<Node, String> {
        let addr = addr_on(free_ports(1)?[0]);
        let log = self.dir.join(format!("{name}.log"));
        let mut c = Command::new(stateline_bin());
        c.arg("serve").arg("--addr").arg(addr.to_string());
        match (&self.data, self.nats.is_empty()) {
            (Some(data), _) => {
                c.arg("--data").arg(data);
            }
            (None, true) => {
                c.arg("--memory");
            }
            (None, false) => {
                c.arg("--cluster")
                    .arg(&self.nats[i % self.nats.len()].url)
                    .args(["--cluster-stream", STREAM])
                    .args(["--cluster-replicas", &self.replicas.to_string()]);
            }
        }
        // Warnings, and the server's own start-up lines (its load and catch-up times).
        c.env("RUST_LOG", "warn,stateline_server=info");
        let child = spawn_logged(&mut c, &log).map_err(|e| {
            format!(
                "starting {}: {e} (build it: cargo build --release -p stateline-server)",
                stateline_bin().display()
            )
        })?;
        Ok(Node { child, addr, log })
    }

    /// How long a Stateline process that starts now takes to serve the state already there:
    /// for a cluster, a fresh node (on the last NATS server) that reads the whole stream; for
    /// `--data`, the process stopped (SIGTERM) and started again on its folder. Returns the time
    /// from spawn to `/_health` 200 and the process's own figure from its log ("cluster: caught
    /// up" or "store loaded", in ms). The new process stays part of the deployment.
    pub async fn time_fresh_node(&mut self) -> Result<(f64, Option<f64>), String> {
        let what = match self.system {
            System::Cluster1 | System::Cluster3 => "cluster: caught up",
            System::StatelineDurable => {
                let mut old = self.nodes.pop().ok_or("no process to restart")?;
                if let Some(pid) = old.child.id() {
                    // This process only, by its id: a graceful stop (redb closes cleanly).
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status();
                }
                if tokio::time::timeout(Duration::from_secs(20), old.child.wait())
                    .await
                    .is_err()
                {
                    let _ = old.child.kill().await;
                }
                "store loaded"
            }
            other => return Err(format!("{}: keeps no state to load", other.name())),
        };
        let i = self.nats.len().saturating_sub(1);
        let name = format!("fresh{}", self.nodes.len());
        let started = Instant::now();
        let mut node = self.spawn_node(i, &name).await?;
        let took = healthy(
            node.addr,
            started,
            Duration::from_secs(300),
            &mut node.child,
        )
        .await;
        let logged = logged_ms(&node.log, what);
        let log = node.log.clone();
        self.nodes.push(node);
        let took = took.map_err(|e| format!("fresh node: {e}\n{}", tail(&log)))?;
        Ok((took.as_secs_f64() * 1000.0, logged))
    }

    /// CPU time (user + system, s) used so far by the NATS servers and by the Stateline
    /// processes of this deployment, from /proc.
    pub fn cpu(&self) -> (f64, f64) {
        let sum = |pids: Vec<Option<u32>>| pids.into_iter().flatten().map(cpu_secs).sum();
        (
            sum(self.nats.iter().map(|n| n.child.id()).collect()),
            sum(self.nodes.iter().map(|n| n.child.id()).collect()),
        )
    }

    /// Lines of the nodes' logs at WARN or above (what went wrong during the run), at most `n`.
    pub fn warnings(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            for l in text
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            {
                if out.len() < n {
                    out.push(format!("{}: {l}", node.addr));
                }
            }
        }
        out
    }

    /// Stops every process this deployment started (nodes first, then NATS) through its handle
    /// and removes the folder.
    pub async fn stop(mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill().await;
        }
        for n in &mut self.nats {
            let _ = n.child.kill().await;
        }
    }
}

impl Drop for Deployment {
    // Also when a start fails half-way: the processes go with their handles (kill on drop).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// Starts a process with its standard error in `log` (killed when its handle is dropped).
fn spawn_logged(c: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    c.stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
}
