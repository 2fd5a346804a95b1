//! WebSocket compression (`permessage-deflate`, RFC 7692) as a layer between the socket and
//! the WebSocket library, which has no extensions of its own and refuses frames with RSV1 set.
//!
//! Reading, a compressed frame (RSV1) is collected, inflated, and handed up as the same frame
//! uncompressed (masked with a zero key, which leaves the bytes as they are). Everything else
//! passes through as it came, so the library still checks it: a control frame with RSV1, RSV1 on
//! a continuation, an unknown opcode. Writing, a whole data message the library writes is
//! compressed and sent with RSV1 when that makes it smaller; control frames, fragments and small
//! messages go out as they are (the RFC lets a sender leave any message uncompressed).
//!
//! The terms were agreed in the handshake (`stateline_core::web::permessage_deflate`): the
//! server compresses every message from a fresh state (no context takeover), with one
//! compressor per worker thread, so a connection holds no compressor. It holds an inflate state
//! only if the client keeps its context between messages, from its first compressed message on.
//!
//! Limits: a compressed frame is buffered whole, at most the message size limit, and a message
//! may inflate to at most that limit too ([`InflatedTooLarge`], closed with 1009): a small
//! compressed message cannot become a large one in memory. Data that does not inflate closes
//! the connection (1002).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

use crate::frames::Header;

/// A message that inflates beyond the message size limit (inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("a compressed message inflates beyond the message size limit")]
pub struct InflatedTooLarge;

/// A compressed message that does not inflate (inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("a compressed message is not valid DEFLATE data")]
pub struct BadDeflate;

/// Messages shorter than this go out uncompressed: DEFLATE's block header and the sync marker
/// cost about as much as a short JSON message can save, and the CPU is spent for nothing.
pub const MIN_COMPRESS: usize = 128;

/// The compression level: 1, the fastest. On JSON state frames it keeps most of level 6's
/// saving for a fraction of its CPU, and the server compresses each frame once per subscriber.
const LEVEL: u32 = 1;

/// Bytes waiting to reach the socket beyond which a write waits for the socket instead of
/// taking more (the library's own write buffer is 4 KiB; one compressed frame may exceed it).
const HIGH_WATER: usize = 64 << 10;

/// The end of a sync flush, which the sender removes and the receiver adds back (RFC 7692,
/// 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

thread_local! {
    // One compressor per worker thread, reset after every message (no context takeover): a
    // compressor's state is a few hundred KiB, too much to keep per connection.
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Broadcast frames kept compressed, so a frame sent to many subscribers is compressed once:
/// with no context takeover a message's compressed bytes depend on the message alone, and
/// every subscriber's queue holds the same frame (the same bytes, not copies of them).
const CACHE_FRAMES: usize = 32;

/// The most the cache holds, frames and their compressed forms together: it keeps the last few
/// frames alive after every queue has sent them. A frame larger than this is compressed by
/// each connection that sends it.
const CACHE_BYTES: usize = 8 << 20;

/// The server's compressed broadcast frames: the last 32, 8 MiB at most.
#[derive(Debug, Default)]
pub struct FrameCache {
    inner: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    entries: VecDeque<Cached>,
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    // Kept, so its address stays this frame's for as long as it is a key.
    plain: Bytes,
    // `None`: it does not shrink.
    packed: Option<Bytes>,
}

impl FrameCache {
    /// The message that sends broadcast `frame` on a connection that agreed compression: its
    /// compressed form, made once for all the connections sending the same frame.
    pub fn message(&self, frame: Bytes) -> Message {
        if frame.len() < MIN_COMPRESS {
            return Message::Binary(frame);
        }
        let same = |c: &Cached| c.plain.as_ptr() == frame.as_ptr() && c.plain.len() == frame.len();
        let hit = self
            .lock()
            .entries
            .iter()
            .rev()
            .find(|c| same(c))
            .map(|c| c.packed.clone());
        let packed = match hit {
            Some(p) => p,
            None => {
                // Compressed outside the lock; two threads may both compress a new frame once.
                let p = compress(&frame)
                    .filter(|c| c.len() < frame.len())
                    .map(Bytes::from);
                let size = frame.len() + p.as_ref().map_or(0, Bytes::len);
                if size <= CACHE_BYTES {
                    let mut cache = self.lock();
                    cache.bytes += size;
                    cache.entries.push_back(Cached {
                        plain: frame.clone(),
                        packed: p.clone(),
                    });
                    while cache.entries.len() > CACHE_FRAMES || cache.bytes > CACHE_BYTES {
                        let Some(old) = cache.entries.pop_front() else {
                            break;
                        };
                        cache.bytes -= old.plain.len() + old.packed.as_ref().map_or(0, Bytes::len);
                    }
                }
                p
            }
        };
        match packed {
            Some(p) => {
                let mut f = Frame::message(p, OpCode::Data(Data::Binary), true);
                f.header_mut().rsv1 = true;
                Message::Frame(f)
            }
            None => Message::Binary(frame),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache is only ever consistent or missing an entry: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An upgraded socket with `permessage-deflate` agreed, or passing everything through.
#[derive(Debug)]
pub struct Deflate<T> {
    io: T,
    // Boxed: a connection without compression carries one pointer.
    state: Option<Box<State>>,
}

impl<T> Deflate<T> {
    /// Whether compression was agreed.
    pub fn is_on(&self) -> bool {
        self.state.is_some()
    }

    /// Passes everything through: compression was not agreed.
    pub fn off(io: T) -> Deflate<T> {
        Deflate { io, state: None }
    }

    /// Compression agreed; `client_no_context_takeover` as agreed, `max_message` the largest
    /// message accepted after inflating.
    pub fn on(io: T, client_no_context_takeover: bool, max_message: usize) -> Deflate<T> {
        let state = State {
            inflating: Inflating {
                max_message,
                fresh_each_message: client_no_context_takeover,
                ..Inflating::default()
            },
            ..State::default()
        };
        Deflate {
            io,
            state: Some(Box::new(state)),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    read: Frames,
    inflating: Inflating,
    /// The read error met after messages that are still to be handed up: it is returned once
    /// they are, so a good message read in the same chunk as a bad one is not lost.
    read_failed: Option<io::Error>,
    write: Frames,
}

/// What happens to the payload of the frame being read or written.
#[derive(Debug)]
enum Payload {
    /// Passed through as it comes.
    Through,
    /// Collected, then transformed, under this header.
    Collect(FrameHeader),
}

/// One direction's frames followed through its bytes: what the direction leaves alone passes
/// through as it comes, the payload of a frame it transforms is collected (unmasked) and
/// replaced once complete.
#[derive(Debug, Default)]
struct Frames {
    header: Header,
    /// Payload bytes of the current frame still to come, and what to do with them.
    left: u64,
    payload: Option<Payload>,
    collected: Vec<u8>,
    mask_at: usize,
    /// Bytes for the other side, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// The stream could not be followed: pass everything through; the library fails the
    /// connection on the same bytes.
    lost: bool,
}

/// What one direction does to frames.
trait Transform {
    /// Whether to collect this frame, to replace it once complete (else it passes through).
    fn collect(&mut self, h: &FrameHeader, len: u64) -> io::Result<bool>;
    /// A collected frame is complete (`payload` unmasked): write its replacement to `out`.
    fn replace(
        &mut self,
        h: FrameHeader,
        payload: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> io::Result<()>;
}

impl Frames {
    fn feed(&mut self, mut data: &[u8], t: &mut impl Transform) -> io::Result<()> {
        while !data.is_empty() {
            if self.lost {
                self.out.extend_from_slice(data);
                return Ok(());
            }
            if let Some(p) = &self.payload {
                let n = (data.len() as u64).min(self.left) as usize;
                match p {
                    Payload::Through => self.out.extend_from_slice(&data[..n]),
                    Payload::Collect(h) => {
                        let mask = h.mask.unwrap_or_default();
                        self.collected.extend(
                            data[..n]
                                .iter()
                                .enumerate()
                                .map(|(i, b)| b ^ mask[(self.mask_at + i) % 4]),
                        );
                        self.mask_at = (self.mask_at + n) % 4;
                    }
                }
                self.left -= n as u64;
                data = &data[n..];
                if self.left == 0 {
                    self.end_frame(t)?;
                }
                continue;
            }
            let Ok(parsed) = self.header.feed(data) else {
                self.lost = true;
                self.out.extend_from_slice(self.header.raw());
                continue;
            };
            let Some((h, len, used)) = parsed else {
                return Ok(());
            };
            data = &data[used..];
            self.left = len;
            if t.collect(&h, len)? {
                self.collected.clear();
                self.mask_at = 0;
                self.payload = Some(Payload::Collect(h));
            } else {
                self.out.extend_from_slice(self.header.raw());
                self.payload = Some(Payload::Through);
            }
            self.header.clear();
            if len == 0 {
                self.end_frame(t)?;
            }
        }
        Ok(())
    }

    fn end_frame(&mut self, t: &mut impl Transform) -> io::Result<()> {
        let Some(Payload::Collect(h)) = self.payload.take() else {
            return Ok(());
        };
        let done = t.replace(h, &mut self.collected, &mut self.out);
        self.collected.clear();
        if self.collected.capacity() > HIGH_WATER {
            // A large message's buffer is not kept for an idle connection.
            self.collected = Vec::new();
        }
        done
    }

    /// Moves ready bytes into `buf`; whether there were any.
    fn drain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.out_at == self.out.len() {
            return false;
        }
        let n = buf.remaining().min(self.out.len() - self.out_at);
        buf.put_slice(&self.out[self.out_at..self.out_at + n]);
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.consumed();
        }
        true
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_at
    }

    /// Writes what is pending to `io`: ready once all of it is written.
    fn poll_drain<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.out[self.out_at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.consumed();
        Poll::Ready(Ok(()))
    }

    fn consumed(&mut self) {
        self.out_at = 0;
        self.out.clear();
        if self.out.capacity() > HIGH_WATER {
            self.out = Vec::new();
        }
    }
}

/// The peer's frames, inflated where compressed.
#[derive(Debug, Default)]
struct Inflating {
    max_message: usize,
    fresh_each_message: bool,
    /// The data message being read is compressed (its continuations are too).
    message_compressed: bool,
    /// Bytes the current message has inflated to so far.
    inflated: usize,
    /// The client's compression context, kept between its messages when it keeps its own.
    inflater: Option<Box<Decompress>>,
}

impl Transform for Inflating {
    fn collect(&mut self, h: &FrameHeader, len: u64) -> io::Result<bool> {
        let compressed = match h.opcode {
            // An unmasked client frame passes through for the library to refuse.
            OpCode::Data(Data::Text | Data::Binary) if h.mask.is_some() => {
                self.message_compressed = h.rsv1;
                self.inflated = 0;
                h.rsv1
            }
            // RSV1 on a continuation passes through for the library to refuse.
            OpCode::Data(Data::Continue) if h.mask.is_some() => self.message_compressed && !h.rsv1,
            _ => false,
        };
        if compressed && len > self.max_message as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, InflatedTooLarge));
        }
        Ok(compressed)
    }

    fn replace(
        &mut self,
        mut h: FrameHeader,
        payload: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        if h.is_final {
            payload.extend_from_slice(&TAIL);
        }
        let limit = self.max_message - self.inflated.min(self.max_message);
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        let plain = inflate(inflater, payload, limit)?;
        self.inflated += plain.len();
        if h.is_final {
            if self.fresh_each_message {
                // No context to keep: the state goes until the next compressed message.
                self.inflater = None;
            }
            self.message_compressed = false;
        }
        h.rsv1 = false;
        // A client frame must be masked; a zero key leaves the inflated bytes as they are.
        h.mask = Some([0; 4]);
        h.format(plain.len() as u64, out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        out.extend_from_slice(&plain);
        Ok(())
    }
}

/// Inflates `input` (one frame's payload) into at most `limit` bytes.
fn inflate(d: &mut Decompress, mut input: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, BadDeflate);
    // At most one byte past the limit, so going over it is seen (and a limit below the first
    // guess still holds).
    let cap = limit.saturating_add(1);
    let mut out = Vec::with_capacity((input.len() * 4).max(256).min(cap));
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, InflatedTooLarge));
            }
            let more = out.len().max(4096).min(cap - out.len());
            out.reserve_exact(more);
        }
        let (in0, out0) = (d.total_in(), out.len());
        let status = d
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|_| bad())?;
        let used = (d.total_in() - in0) as usize;
        input = &input[used..];
        if out.len() > limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, InflatedTooLarge));
        }
        match status {
            // The sender ended its stream (BFINAL): the next message starts a fresh one.
            Status::StreamEnd => {
                d.reset(false);
                return Ok(out);
            }
            _ if input.is_empty() && out.len() < out.capacity() => return Ok(out),
            _ if used == 0 && out.len() == out0 && out.len() < out.capacity() => return Err(bad()),
            _ => {}
        }
    }
}

/// The library's frames, compressed where it pays.
#[derive(Debug, Default)]
struct Deflating;

impl Transform for Deflating {
    fn collect(&mut self, h: &FrameHeader, len: u64) -> io::Result<bool> {
        // Whole data messages only (the server's are never fragmented); RSV1 must be free.
        let whole = matches!(h.opcode, OpCode::Data(Data::Text | Data::Binary))
            && h.is_final
            && !h.rsv1
            && h.mask.is_none();
        Ok(whole && len >= MIN_COMPRESS as u64)
    }

    fn replace(
        &mut self,
        mut h: FrameHeader,
        payload: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let packed = compress(payload);
        let body = match &packed {
            Some(c) if c.len() < payload.len() => {
                h.rsv1 = true;
                c.as_slice()
            }
            _ => payload.as_slice(),
        };
        // Writing into a Vec cannot fail.
        let _ = h.format(body.len() as u64, out);
        out.extend_from_slice(body);
        Ok(())
    }
}

/// One message compressed from a fresh state, the sync marker removed; `None` if the
/// compressor failed (the message then goes out as it is).
fn compress(input: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut slot = c.borrow_mut();
        let c = slot.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        c.reset();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut rest = input;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(256));
            }
            let before = c.total_in();
            c.compress_vec(rest, &mut out, FlushCompress::Sync).ok()?;
            rest = &rest[(c.total_in() - before) as usize..];
            // Done when all input is in and the flush did not fill the buffer.
            if rest.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        Some(out)
    })
}

impl<T: AsyncRead + Unpin> AsyncRead for Deflate<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(state) = this.state.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let (r, inflating) = (&mut state.read, &mut state.inflating);
        loop {
            if r.drain(buf) {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = state.read_failed.take() {
                return Poll::Ready(Err(e));
            }
            // Read as much as the caller asked for; what the reader holds back (a compressed
            // frame being collected) comes out on a later round.
            let mut chunk = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut chunk[..buf.remaining().clamp(1, 4096)]);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    if let Err(e) = r.feed(rb.filled(), inflating) {
                        state.read_failed = Some(e);
                    }
                }
                other => return other,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deflate<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(state) = this.state.as_mut() else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        let w = &mut state.write;
        if w.pending() >= HIGH_WATER {
            match w.poll_drain(&mut this.io, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if w.pending() >= HIGH_WATER => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        // Compressing into a Vec cannot fail.
        let _ = w.feed(buf, &mut Deflating);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(state) = this.state.as_mut() {
            std::task::ready!(state.write.poll_drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(state) = this.state.as_mut() {
            std::task::ready!(state.write.poll_drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
