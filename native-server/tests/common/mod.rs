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

/// Starts the server on `dir` and waits (at most 20 s) until it accepts connections; returns it
/// and its base URL.
pub fn start(dir: &Path, extra: &[&str]) -> (Server, String) {
    let port = port();
    let child = Server(
        serve_cmd(dir, port, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}"))
}
