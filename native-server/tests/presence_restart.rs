//! Leased keys and on-close writes across a crash and a shutdown, on a data folder: a leased
//! key whose server was killed expires by its lease TTL after the restart; a server that shuts
//! down runs every open connection's end writes before its store closes. Servers listen on
//! 127.0.0.1 and are stopped by the PID this test started.

mod common;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use stateline_client::Client;
use tokio_tungstenite::tungstenite::Message;

async fn status(c: &Client, key: &str) -> u16 {
    c.request(http::Method::GET, &format!("/{key}"), &[], "")
        .await
        .expect("get")
        .status
        .as_u16()
}

async fn wait_healthy(c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c.request(http::Method::GET, "/_health", &[], "").await {
            if r.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(w: &mut Ws, v: serde_json::Value) {
    use futures_util::StreamExt;
    w.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
    let id = v["id"].clone();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("a message");
        if let Ok(r) = serde_json::from_slice::<serde_json::Value>(&m.into_data()) {
            if r["id"] == id {
                assert_eq!(r["ok"], json!(true), "{r}");
                return;
            }
        }
    }
}

async fn connect(base: &str) -> Ws {
    let url = format!("{}/_ws", base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect")
        .0
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("stateline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn a_leased_key_of_a_killed_server_expires_after_the_restart() {
    let d = dir("lease-crash");
    let (server, base) = common::start(&d, &["--lease-ttl", "2s"]);
    let c = Client::new(&base).unwrap();
    wait_healthy(&c).await;
    let mut w = connect(&base).await;
    send(
        &mut w,
        json!({"id":1,"op":"set","key":"presence/r/ann","value":1,"lease":true}),
    )
    .await;
    assert_eq!(status(&c, "presence/r/ann").await, 200);
    // SIGKILL: nothing runs at the end of the connection.
    drop(server);
    drop(w);
    let (_server, base) = common::start(&d, &["--lease-ttl", "2s"]);
    let c = Client::new(&base).unwrap();
    wait_healthy(&c).await;
    let deadline = Instant::now() + Duration::from_secs(6);
    while status(&c, "presence/r/ann").await != 404 {
        assert!(
            Instant::now() < deadline,
            "the leased key outlived its lease TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn shutdown_runs_every_connections_end_writes_before_the_store_closes() {
    let d = dir("lease-shutdown");
    let (mut server, base) = common::start(&d, &[]);
    let c = Client::new(&base).unwrap();
    wait_healthy(&c).await;
    let mut w = connect(&base).await;
    send(
        &mut w,
        json!({"id":1,"op":"set","key":"presence/r/bob","value":1,"lease":true}),
    )
    .await;
    send(
        &mut w,
        json!({"id":2,"op":"onclose","write":{"op":"set","key":"seen/bob","value":"left"}}),
    )
    .await;
    let pid = server.0.id();
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(w);
    let (_server, base) = common::start(&d, &[]);
    let c = Client::new(&base).unwrap();
    wait_healthy(&c).await;
    assert_eq!(
        status(&c, "presence/r/bob").await,
        404,
        "released at shutdown"
    );
    assert_eq!(status(&c, "seen/bob").await, 200, "the on-close write ran");
    let _ = std::fs::remove_dir_all(&d);
}
