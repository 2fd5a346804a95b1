//! The layer under the real WebSocket library: a client written by hand on one end of an
//! in-memory pipe, tungstenite (server role) over [`Deflate`] on the other.

use super::*;
use crate::frames::client_frame as frame;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const MAX: usize = 1 << 20;

/// What a client's compressor sends for `msg`, continuing `c`'s context.
fn deflate_with(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

fn client_compressor() -> Compress {
    Compress::new(Compression::default(), false)
}

fn pair(no_context: bool, max: usize) -> (DuplexStream, WebSocketStream<Deflate<DuplexStream>>) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let ws = futures_util::FutureExt::now_or_never(WebSocketStream::from_raw_socket(
        Deflate::on(server, no_context, max),
        Role::Server,
        None,
    ))
    .unwrap();
    (client, ws)
}

fn json(n: usize) -> String {
    let fields: Vec<String> = (0..n)
        .map(|i| format!("\"field{i}\":\"value {i}\""))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Reads one server frame: (first byte, payload).
async fn server_frame(c: &mut DuplexStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => c.read_u16().await.unwrap() as usize,
        127 => c.read_u64().await.unwrap() as usize,
        n => n as usize,
    };
    let mut p = vec![0; len];
    c.read_exact(&mut p).await.unwrap();
    (h[0], p)
}

fn inflate_all(d: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    inflate(d, &input, MAX).unwrap()
}

#[tokio::test]
async fn compressed_messages_arrive_whole_in_any_cut() {
    let a = json(300);
    let b = json(200);
    for no_context in [false, true] {
        let mut c = client_compressor();
        let mut bytes = Vec::new();
        // One compressed message, a plain one, a compressed one in three fragments with a ping
        // between them, and an empty compressed message.
        bytes.extend(frame(true, true, 1, &deflate_with(&mut c, a.as_bytes())));
        if no_context {
            c.reset();
        }
        bytes.extend(frame(true, false, 1, b"plain"));
        let packed = deflate_with(&mut c, b.as_bytes());
        let (p1, rest) = packed.split_at(packed.len() / 3);
        let (p2, p3) = rest.split_at(rest.len() / 2);
        bytes.extend(frame(false, true, 2, p1));
        bytes.extend(frame(false, false, 0, p2));
        bytes.extend(frame(true, false, 9, b"ping"));
        bytes.extend(frame(true, false, 0, p3));
        if no_context {
            c.reset();
        }
        bytes.extend(frame(true, true, 1, &deflate_with(&mut c, b"")));
        for step in [1, 7, 100, bytes.len()] {
            let (mut client, mut ws) = pair(no_context, MAX);
            let feed = bytes.clone();
            let writer = tokio::spawn(async move {
                for chunk in feed.chunks(step) {
                    client.write_all(chunk).await.unwrap();
                }
                client
            });
            let mut got = Vec::new();
            while got.len() < 4 {
                match ws.next().await.unwrap().unwrap() {
                    Message::Ping(_) | Message::Pong(_) => {}
                    m => got.push(m),
                }
            }
            assert_eq!(got[0], Message::Text(a.clone().into()), "step {step}");
            assert_eq!(got[1], Message::Text("plain".into()));
            assert_eq!(got[2], Message::Binary(b.clone().into_bytes().into()));
            assert_eq!(got[3], Message::Text("".into()));
            drop(writer.await.unwrap());
        }
    }
}

#[tokio::test]
async fn large_messages_go_out_compressed_and_small_ones_plain() {
    let (mut client, mut ws) = pair(false, MAX);
    let big = json(400);
    ws.send(Message::Text(big.clone().into())).await.unwrap();
    ws.send(Message::Text("{\"a\":1}".into())).await.unwrap();
    ws.send(Message::Binary(big.clone().into_bytes().into()))
        .await
        .unwrap();
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let mut d = Decompress::new(false);
    let (b0, p) = server_frame(&mut client).await;
    assert_eq!(b0, 0x80 | 0x40 | 1, "final, compressed, text");
    assert!(p.len() * 4 < big.len(), "{} of {}", p.len(), big.len());
    assert_eq!(inflate_all(&mut d, &p), big.as_bytes());
    let (b0, p) = server_frame(&mut client).await;
    assert_eq!((b0, p.as_slice()), (0x81, &b"{\"a\":1}"[..]));
    // Each message from a fresh state: a new inflater reads the second large one too.
    let (b0, p) = server_frame(&mut client).await;
    assert_eq!(b0, 0x80 | 0x40 | 2);
    assert_eq!(inflate_all(&mut Decompress::new(false), &p), big.as_bytes());
    let (b0, p) = server_frame(&mut client).await;
    assert_eq!((b0, p.as_slice()), (0x89, &b"p"[..]));
}

#[tokio::test]
async fn a_message_that_does_not_shrink_goes_out_plain() {
    let (mut client, mut ws) = pair(false, MAX);
    // Random-looking bytes do not compress.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4000)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    ws.send(Message::Binary(noise.clone().into()))
        .await
        .unwrap();
    let (b0, p) = server_frame(&mut client).await;
    assert_eq!(b0, 0x82);
    assert_eq!(p, noise);
}

#[tokio::test]
async fn a_message_inflating_past_the_limit_fails_the_read() {
    let (mut client, mut ws) = pair(true, 64 << 10);
    // 1 MiB of zeros is about a kilobyte compressed.
    let bomb = deflate_with(&mut client_compressor(), &vec![0u8; 1 << 20]);
    assert!(bomb.len() < 8 << 10);
    client
        .write_all(&frame(true, true, 2, &bomb))
        .await
        .unwrap();
    match ws.next().await.unwrap() {
        Err(WsError::Io(e)) => assert!(e.get_ref().unwrap().is::<InflatedTooLarge>(), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_compressed_frame_beyond_the_limit_is_refused_before_it_is_read() {
    let (mut client, mut ws) = pair(true, 1000);
    let mut head = frame(true, true, 2, &[0; 2000]);
    head.truncate(8);
    client.write_all(&head).await.unwrap();
    match ws.next().await.unwrap() {
        Err(WsError::Io(e)) => assert!(e.get_ref().unwrap().is::<InflatedTooLarge>()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn data_that_does_not_inflate_fails_the_read() {
    let (mut client, mut ws) = pair(true, MAX);
    // Block type 3 is reserved in DEFLATE.
    client
        .write_all(&frame(true, true, 1, &[0xff, 0xff, 0xff]))
        .await
        .unwrap();
    match ws.next().await.unwrap() {
        Err(WsError::Io(e)) => assert!(e.get_ref().unwrap().is::<BadDeflate>(), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rsv1_where_it_is_not_allowed_is_left_for_the_library_to_refuse() {
    // On a control frame, and on a continuation.
    let cases = [
        frame(true, true, 9, b"ping"),
        [frame(false, false, 1, b"a"), frame(true, true, 0, b"b")].concat(),
    ];
    for bytes in cases {
        let (mut client, mut ws) = pair(true, MAX);
        client.write_all(&bytes).await.unwrap();
        match ws.next().await.unwrap() {
            Err(WsError::Protocol(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn off_passes_everything_through() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let mut ws = WebSocketStream::from_raw_socket(Deflate::off(server), Role::Server, None).await;
    let big = json(400);
    ws.send(Message::Text(big.clone().into())).await.unwrap();
    let (b0, p) = server_frame(&mut client).await;
    assert_eq!((b0, p), (0x81, big.into_bytes()));
    // RSV1 is refused as without the layer.
    client
        .write_all(&frame(true, true, 1, b"xx"))
        .await
        .unwrap();
    assert!(matches!(
        ws.next().await.unwrap(),
        Err(WsError::Protocol(_))
    ));
}

#[test]
fn compress_round_trips_and_reuses_the_thread_compressor() {
    for msg in [json(10), json(1000), "x".repeat(100_000)] {
        for _ in 0..2 {
            let packed = compress(msg.as_bytes()).unwrap();
            let mut d = Decompress::new(false);
            assert_eq!(inflate_all(&mut d, &packed), msg.as_bytes());
        }
    }
}

/// A compressed frame's payload: where it is and what it holds.
fn packed_payload(m: &Message) -> Option<(*const u8, Vec<u8>)> {
    match m {
        Message::Frame(f) => {
            assert!(f.header().rsv1 && f.header().is_final);
            Some((f.payload().as_ptr(), f.payload().to_vec()))
        }
        _ => None,
    }
}

#[test]
fn a_broadcast_frame_is_compressed_once_for_every_connection() {
    let cache = FrameCache::default();
    let frame = Bytes::from(json(300));
    let a = packed_payload(&cache.message(frame.clone())).unwrap();
    let b = packed_payload(&cache.message(frame.clone())).unwrap();
    assert_eq!(a.0, b.0, "the same compressed bytes, shared");
    assert_eq!(inflate_all(&mut Decompress::new(false), &a.1), frame);
    // Equal content at another address is another frame: compressed again, same result.
    let copy = Bytes::from(json(300));
    let c = packed_payload(&cache.message(copy)).unwrap();
    assert_ne!(c.0, a.0);
    assert_eq!(c.1, a.1);
    // Small frames and frames that do not shrink go as they are.
    assert!(matches!(
        cache.message(Bytes::from_static(b"{}")),
        Message::Binary(_)
    ));
    let mut x = 1u64;
    let noise: Bytes = (0..2000)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect::<Vec<u8>>()
        .into();
    assert_eq!(cache.message(noise.clone()), Message::Binary(noise));
}

#[test]
fn the_frame_cache_is_bounded() {
    let cache = FrameCache::default();
    for i in 0..CACHE_FRAMES * 2 {
        cache.message(Bytes::from(format!("{i}{}", json(50))));
    }
    assert_eq!(cache.lock().entries.len(), CACHE_FRAMES);
    // A frame larger than the whole budget is compressed but not kept.
    let huge = Bytes::from("x".repeat(CACHE_BYTES + 1));
    assert!(packed_payload(&cache.message(huge)).is_some());
    let c = cache.lock();
    assert!(c.bytes <= CACHE_BYTES && c.entries.len() == CACHE_FRAMES);
}

#[tokio::test]
async fn a_limit_below_the_first_buffer_still_inflates_and_refuses() {
    // The first output buffer is sized from the input; a limit smaller than that size (a small
    // --max-body, or the rest of a message's budget after its first fragments) must hold.
    let small = "a".repeat(150);
    let large = "b".repeat(300);
    let (mut client, mut ws) = pair(true, 200);
    let mut bytes = frame(
        true,
        true,
        1,
        &deflate_with(&mut client_compressor(), small.as_bytes()),
    );
    bytes.extend(frame(
        true,
        true,
        1,
        &deflate_with(&mut client_compressor(), large.as_bytes()),
    ));
    client.write_all(&bytes).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text(small.into())
    );
    match ws.next().await.unwrap() {
        Err(WsError::Io(e)) => assert!(e.get_ref().unwrap().is::<InflatedTooLarge>(), "{e}"),
        other => panic!("{other:?}"),
    }
    // A message in fragments: the budget left for the last one (10 bytes) is below the first
    // buffer's size, and the fragment inflates to 20.
    let (mut client, mut ws) = pair(false, 200);
    let whole = format!("{}{}", "c".repeat(190), "0123456789".repeat(2));
    let packed = deflate_with(&mut client_compressor(), whole.as_bytes());
    let (first, second) = packed.split_at(packed.len() - 3);
    let bytes = [frame(false, true, 2, first), frame(true, false, 0, second)].concat();
    client.write_all(&bytes).await.unwrap();
    match ws.next().await.unwrap() {
        Err(WsError::Io(e)) => assert!(e.get_ref().unwrap().is::<InflatedTooLarge>(), "{e}"),
        other => panic!("{other:?}"),
    }
}
