//! The WebSocket message deadline: a reader around an upgraded socket that follows the frame
//! headers the peer sends, so the server knows when a data message has started and when its
//! final frame has been read, which the WebSocket library keeps to itself.
//!
//! A message must be complete within `--message-timeout` of its first byte (the WebSocket form
//! of a body timeout): otherwise the read fails with [`MessageTimedOut`] and the connection is
//! closed (1008). Without it, a peer that sends the first fragment of a large message and then
//! only pings keeps that buffer pinned for as long as it likes. Frame headers are parsed by
//! tungstenite itself ([`FrameHeader::parse`]); only the byte counting is here.

use std::future::Future;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The read error a message not finished in time produces (inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("the message was not completed within the message timeout")]
pub struct MessageTimedOut;

/// The longest frame header (RFC 6455: 2 + 8 length bytes + 4 mask bytes).
const MAX_HEADER: usize = 14;

/// A frame header being collected from a byte stream (here and in `deflate`).
#[derive(Debug, Default)]
pub(crate) struct Header {
    bytes: [u8; MAX_HEADER],
    len: usize,
}

impl Header {
    /// Takes header bytes from `data`: the parsed header, its payload length and how much of
    /// `data` it used, or `None` with all of `data` taken when the header is not complete.
    /// After a parsed header, [`Header::raw`] holds its bytes until [`Header::clear`].
    pub(crate) fn feed(&mut self, data: &[u8]) -> io::Result<Option<(FrameHeader, u64, usize)>> {
        let old = self.len;
        let take = (MAX_HEADER - old).min(data.len());
        self.bytes[old..old + take].copy_from_slice(&data[..take]);
        let mut cur = Cursor::new(&self.bytes[..old + take]);
        match FrameHeader::parse(&mut cur) {
            Ok(None) => {
                self.len = old + take;
                Ok(None)
            }
            Ok(Some((h, len))) => {
                let raw = cur.position() as usize;
                self.len = raw;
                Ok(Some((h, len, raw - old)))
            }
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// The header bytes taken so far (the whole header once parsed).
    pub(crate) fn raw(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Starts on the next header.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

/// Where the reader is in the peer's frame stream.
#[derive(Debug, Default)]
struct Frames {
    header: Header,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Whether the current frame is the final frame of a data message.
    ends_message: bool,
    /// A data message has started and its final frame is not fully read.
    in_message: bool,
    /// The stream could not be followed (a header tungstenite refuses): stop tracking; the
    /// WebSocket library fails the connection on the same bytes.
    lost: bool,
}

/// What reading some bytes did to the message state: how many messages started and ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    started: usize,
    ended: usize,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) -> Seen {
        let mut seen = Seen::default();
        while !data.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = (data.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                data = &data[n as usize..];
                if self.payload_left == 0 && self.ends_message {
                    self.end(&mut seen);
                }
                continue;
            }
            match self.header.feed(data) {
                // All of `data` went into the header.
                Ok(None) => break,
                Ok(Some((h, len, used))) => {
                    data = &data[used..];
                    self.header.clear();
                    self.payload_left = len;
                    self.ends_message = false;
                    // Control frames (ping, pong, close) may come between fragments.
                    if let OpCode::Data(Data::Text | Data::Binary | Data::Continue) = h.opcode {
                        if !self.in_message {
                            self.in_message = true;
                            seen.started += 1;
                        }
                        self.ends_message = h.is_final;
                        if h.is_final && len == 0 {
                            self.end(&mut seen);
                        }
                    }
                }
                Err(_) => self.lost = true,
            }
        }
        seen
    }

    fn end(&mut self, seen: &mut Seen) {
        self.in_message = false;
        self.ends_message = false;
        seen.ended += 1;
    }
}

/// An upgraded socket whose reads fail with [`MessageTimedOut`] once a data message has been
/// unfinished for longer than the timeout. Writes pass through.
#[derive(Debug)]
pub struct Deadline<T> {
    io: T,
    timeout: Duration,
    frames: Frames,
    // Armed while a message is unfinished; polled with the socket so a silent peer is caught too.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Deadline<T> {
    /// Wraps `io`; every message read from it must finish within `timeout` of its first byte.
    pub fn new(io: T, timeout: Duration) -> Deadline<T> {
        Deadline {
            io,
            timeout,
            frames: Frames::default(),
            timer: None,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, MessageTimedOut)
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let seen = this.frames.feed(&buf.filled()[before..]);
                if seen.started > 0 && this.frames.in_message {
                    this.timer = Some(Box::pin(tokio::time::sleep_until(
                        Instant::now() + this.timeout,
                    )));
                } else if seen.ended > 0 && !this.frames.in_message {
                    this.timer = None;
                }
                // A peer that keeps sending (pings, more fragments) is caught here.
                if this.frames.in_message && this.expired(cx) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // A silent peer in the middle of a message: the timer wakes this read.
                if this.expired(cx) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A masked client frame (for tests here and in `deflate`); `rsv1` marks it compressed.
#[cfg(test)]
pub(crate) fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        v.push(0x80 | n as u8);
    } else if n < 65536 {
        v.push(0x80 | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(fin, false, opcode, payload)
    }

    #[test]
    fn follows_messages_across_reads_of_any_size() {
        let mut bytes = Vec::new();
        bytes.extend(frame(true, 1, b"whole"));
        bytes.extend(frame(false, 2, &[7; 70_000]));
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(false, 0, &[7; 300]));
        bytes.extend(frame(true, 0, b""));
        for step in [1, 3, 13, 14, 1000, bytes.len()] {
            let mut f = Frames::default();
            let (mut started, mut ended) = (0, 0);
            let mut open_after_first_fragment = false;
            for (i, chunk) in bytes.chunks(step).enumerate() {
                let s = f.feed(chunk);
                started += s.started;
                ended += s.ended;
                if (i + 1) * step >= 11 + 80 && (i + 1) * step < bytes.len() {
                    open_after_first_fragment |= f.in_message;
                }
            }
            assert_eq!((started, ended), (2, 2), "step {step}");
            assert!(!f.in_message && !f.lost, "step {step}");
            // Read in pieces, the unfinished message is seen as open in between.
            assert!(
                open_after_first_fragment || step == bytes.len(),
                "step {step}"
            );
        }
    }

    #[test]
    fn an_unfinished_message_stays_open() {
        let mut f = Frames::default();
        f.feed(&frame(false, 1, b"part"));
        f.feed(&frame(true, 9, b""));
        assert!(f.in_message);
        f.feed(&frame(true, 0, b"rest"));
        assert!(!f.in_message);
    }
}
