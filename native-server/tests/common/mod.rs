//! What the storage tests share: the `stateline` binary started on a free 127.0.0.1 port with a
//! data folder, killed (by its own handle) when the test ends.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `stateline serve`, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
pub fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `stateline serve --addr 127.0.0.1:<port> <extra> --data <dir>`, not started yet.
pub fn serve_cmd(dir: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateline"));
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .arg("--data")
        .arg(dir);
    cmd
}

/// Starts the server on `dir` and waits (at most 20 s) until it answers `/_health`; returns it
/// and its base URL. A free port may be taken by another test's server between [`port`] and the
/// bind: a server that exits (address in use) is started again on another port, and only our
/// own child answering `/_health` counts as started.
pub fn start(dir: &Path, extra: &[&str]) -> (Server, String) {
    for _ in 0..5 {
        let port = port();
        let mut child = Server(
            serve_cmd(dir, port, extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.0.try_wait().unwrap().is_some() {
                break;
            }
            if healthy(port) && child.0.try_wait().unwrap().is_none() {
                return (child, format!("http://127.0.0.1:{port}"));
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("the server exited at start five times (ports taken?)");
}

// Whether something on `port` answers `GET /_health` with 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /_health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
