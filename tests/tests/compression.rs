//! WebSocket compression (`permessage-deflate`, `--ws-deflate`): the handshake's terms, frames
//! compressed both ways, and what a hostile compressed message gets. Off by default: a server
//! started without the flag ignores the offer and refuses compressed frames as before.
//!
//! The tests of the flag start their own server and are skipped against `STATELINE_URL`; the
//! default runs against any target (the edge worker's runtime compresses by itself: a
//! documented difference).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use stateline_conformance::{client_frame, differs, raw_ws, unique, Server, SOON};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n";

/// A value that compresses well and is large enough to be compressed (a few KiB).
fn big_value() -> Value {
    let fields: serde_json::Map<String, Value> = (0..200)
        .map(|i| (format!("field{i:03}"), json!(format!("value number {i}"))))
        .collect();
    Value::Object(fields)
}

/// `msg` compressed as a client sends it (RFC 7692, 7.2.1): raw DEFLATE, sync flush, the
/// final 4 bytes removed.
fn deflate(msg: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(msg.len() + 64);
    c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A masked client frame with RSV1 set: a compressed message.
fn compressed_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(true, opcode, payload);
    f[0] |= 0x40;
    f
}

/// The next server frame other than a ping: (first byte, payload), or `None` at the end.
async fn frame(t: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let read = async {
        loop {
            let mut h = [0u8; 2];
            t.read_exact(&mut h).await.ok()?;
            let len = match h[1] & 0x7f {
                126 => u64::from(t.read_u16().await.ok()?),
                127 => t.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut p = vec![0u8; len as usize];
            t.read_exact(&mut p).await.ok()?;
            if h[0] & 0x0f != 0x9 {
                return Some((h[0], p));
            }
        }
    };
    tokio::time::timeout(SOON, read).await.ok().flatten()
}

/// The close code of the next frame, which must be a close.
async fn close_code(t: &mut TcpStream) -> u16 {
    let (b0, p) = frame(t).await.expect("a close frame");
    assert_eq!(b0 & 0x0f, 0x8, "a close frame, got {b0:#x}");
    u16::from_be_bytes([p[0], p[1]])
}

async fn write(s: &Server, key: &str, v: &Value) {
    let r = s
        .client()
        .request(
            http::Method::POST,
            &format!("/{key}"),
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn with_the_flag_frames_are_compressed_both_ways() {
    let Some(s) = Server::with_flags(&["--ws-deflate"]).await else {
        return;
    };
    let key = unique("deflate");
    let value = big_value();
    write(&s, &key, &value).await;

    // ooo's subscription: the first frame (the whole value) comes compressed.
    let (mut t, head) = raw_ws(&s, &format!("/{key}"), OFFER).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let (b0, p) = frame(&mut t).await.expect("the first frame");
    assert_eq!(b0 & 0x40, 0x40, "RSV1: compressed");
    let plain = inflate(&p);
    assert!(p.len() * 3 < plain.len(), "{} -> {}", plain.len(), p.len());
    // ooo's snapshot frame: the entry, whose `data` is the value.
    let got: Value = serde_json::from_slice(&plain).unwrap();
    assert!(got["data"]["data"] == value, "the value changed on the way");

    // `/_ws`: a compressed request is understood, and its large answer comes compressed.
    let (mut m, head) = raw_ws(&s, "/_ws", OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let other = unique("deflate-mux");
    let req = json!({"id": 1, "op": "set", "key": other, "value": value});
    m.write_all(&compressed_frame(1, &deflate(req.to_string().as_bytes())))
        .await
        .unwrap();
    let (b0, p) = frame(&mut m).await.expect("the reply");
    assert_eq!(b0 & 0x40, 0, "a short reply goes as it is");
    let reply: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["ok"], true, "{reply}");
    // The value was stored exactly as sent.
    let r = s
        .client()
        .request(http::Method::GET, &format!("/{other}"), &[], "")
        .await
        .unwrap();
    let stored: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        stored["data"] == value,
        "the value changed on the way: {}",
        &r.body.len()
    );

    // Subscribing to it: the reply is short, the value that follows is large and compressed.
    let req = json!({"id": 2, "op": "sub", "path": other});
    m.write_all(&client_frame(true, 1, req.to_string().as_bytes()))
        .await
        .unwrap();
    let (b0, p) = frame(&mut m).await.expect("the sub reply");
    assert_eq!(b0 & 0x40, 0, "a short reply goes as it is");
    let reply: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let (b0, p) = frame(&mut m).await.expect("the value");
    assert_eq!(b0 & 0x40, 0x40, "the value is compressed");
    let text = String::from_utf8(inflate(&p)).unwrap();
    assert!(text.contains("\"field199\":\"value number 199\""), "{text}");
}

#[tokio::test]
async fn a_compressed_message_too_large_once_inflated_closes_with_1009_and_changes_nothing() {
    let Some(s) = Server::with_flags(&["--ws-deflate", "--max-body", "65536"]).await else {
        return;
    };
    let key = unique("bomb");
    // A set of 1 MiB of spaces: a kilobyte compressed, 16 times the limit inflated.
    let req = format!(
        "{{\"id\":1,\"op\":\"set\",\"key\":\"{key}\",\"value\":\"{}\"}}",
        " ".repeat(1 << 20)
    );
    let packed = deflate(req.as_bytes());
    assert!(packed.len() < 8 << 10);
    let (mut m, head) = raw_ws(&s, "/_ws", OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    m.write_all(&compressed_frame(1, &packed)).await.unwrap();
    assert_eq!(close_code(&mut m).await, 1009);
    let r = s
        .client()
        .request(http::Method::GET, &format!("/{key}"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "nothing was stored");
}

#[tokio::test]
async fn data_that_does_not_inflate_closes_with_1002() {
    let Some(s) = Server::with_flags(&["--ws-deflate"]).await else {
        return;
    };
    let (mut m, _) = raw_ws(&s, "/_ws", OFFER).await;
    // DEFLATE's block type 3 is reserved.
    m.write_all(&compressed_frame(1, &[0xff, 0xff, 0xff]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut m).await, 1002);
}

#[tokio::test]
async fn terms_the_server_cannot_keep_are_declined() {
    let Some(s) = Server::with_flags(&["--ws-deflate"]).await else {
        return;
    };
    // A smaller server window is declined; the connection goes on uncompressed.
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let (_t, head) = raw_ws(&s, "/_ws", offer).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    // A browser's offer is accepted; the client keeps its context (no echo of the client's
    // parameter).
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (_t, head) = raw_ws(&s, "/_ws", offer).await;
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
}

#[tokio::test]
async fn by_default_the_offer_is_ignored_and_rsv1_refused() {
    // Any target: a native server without the flag, or the edge worker, whose runtime
    // compresses by itself (a documented difference).
    let s = Server::start().await;
    let key = unique("plain");
    let value = big_value();
    write(&s, &key, &value).await;
    let (mut t, head) = raw_ws(&s, &format!("/{key}"), OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let agreed = head
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions: permessage-deflate");
    let (b0, p) = frame(&mut t).await.expect("the first frame");
    if differs("ws-deflate-runtime") {
        assert!(agreed, "{head}");
        // Whether the runtime compressed this frame is its choice; the value is exact.
        let plain = if b0 & 0x40 != 0 { inflate(&p) } else { p };
        let got: Value = serde_json::from_slice(&plain).unwrap();
        assert!(got["data"]["data"] == value, "the value changed on the way");
        return;
    }
    assert!(!agreed, "{head}");
    assert_eq!(b0, 0x82, "a final binary frame, no RSV1");
    let got: Value = serde_json::from_slice(&p).unwrap();
    assert!(got["data"]["data"] == value, "the value changed on the way");
    t.write_all(&compressed_frame(1, &deflate(b"{}")))
        .await
        .unwrap();
    assert_eq!(close_code(&mut t).await, 1002);
}
