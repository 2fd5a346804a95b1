//! An SSE stream leaves hyper once its response head is on the wire, as a WebSocket does after
//! its upgrade, so an idle stream holds only its own task and socket instead of a whole hyper
//! connection (two buffers of 8 KiB, the dispatcher, the response body).
//!
//! hyper has no upgrade for a `200`, so the hand-over is done under it: every client connection's
//! IO is a [`Detachable`] that shares a [`Handoff`] with the requests it carries. An SSE request
//! *arms* it and answers with a body that ends as soon as hyper has flushed the head
//! ([`HeadThenEnd`]); the IO swallows the chunked encoding's last chunk (`0\r\n\r\n`) that hyper
//! then writes, reports end-of-file to hyper's next read, and, when hyper drops it, hands the
//! socket to the stream's task, which goes on writing chunks of the same response itself. The
//! client sees one chunked response, exactly as when hyper wrote it all.
//!
//! A request that hyper parses after the SSE request on the same connection (pipelined behind
//! it) is refused without being served ([`Handoff::taken`]): it would never get an answer.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The last chunk of a chunked body, which hyper writes when the body ends.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// No SSE request has claimed the connection: the IO passes everything through.
const OPEN: u8 = 0;
/// An SSE response is being answered; its head is not flushed yet.
const ARMED: u8 = 1;
/// The head is flushed: the body ends, and the next bytes hyper writes are [`LAST_CHUNK`].
const HEAD_SENT: u8 = 2;
/// The last chunk was swallowed: hyper reads end-of-file, and the socket goes to the stream's
/// task when hyper drops the IO.
const DETACHED: u8 = 3;

/// What one connection's IO and its requests share (one per connection).
pub(crate) struct Handoff<T> {
    state: AtomicU8,
    inner: Mutex<Pending<T>>,
}

struct Pending<T> {
    /// Where the socket goes once hyper is done with it.
    to: Option<oneshot::Sender<T>>,
    /// The SSE body waiting for the head to be flushed.
    body: Option<Waker>,
}

impl<T> Handoff<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Handoff {
            state: AtomicU8::new(OPEN),
            inner: Mutex::new(Pending {
                to: None,
                body: None,
            }),
        })
    }

    /// Whether an SSE request has claimed the connection: a request after it is not served.
    pub(crate) fn taken(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN
    }

    /// Claims the connection for the SSE response about to be returned: the socket arrives on
    /// the receiver once hyper has sent the head and let go of it. `None` if it was already
    /// claimed.
    pub(crate) fn arm(self: &Arc<Self>) -> Option<(oneshot::Receiver<T>, HeadThenEnd<T>)> {
        let (tx, rx) = oneshot::channel();
        let mut p = self.lock();
        if self
            .state
            .compare_exchange(OPEN, ARMED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        p.to = Some(tx);
        Some((rx, HeadThenEnd(self.clone())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// The head is on the wire: wake the body so that it ends.
    fn head_sent(&self) {
        let waker = {
            let mut p = self.lock();
            self.state.store(HEAD_SENT, Ordering::Release);
            p.body.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The body of an SSE response that leaves hyper: nothing, ending once the head is flushed (it
/// must not end before, or hyper would write the head and the last chunk together).
pub(crate) struct HeadThenEnd<T>(Arc<Handoff<T>>);

impl<T: Send + 'static> hyper::body::Body for HeadThenEnd<T> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let h = &self.0;
        if h.state() >= HEAD_SENT {
            return Poll::Ready(None);
        }
        let mut p = h.lock();
        // Checked again under the lock: `head_sent` stores the state under it.
        if h.state() >= HEAD_SENT {
            return Poll::Ready(None);
        }
        p.body = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        // Never at the start: an empty body would be sent with `content-length: 0`.
        false
    }
}

/// A client connection's IO as hyper sees it: the socket, until an SSE response takes it.
pub(crate) struct Detachable<T> {
    io: Option<T>,
    hand: Arc<Handoff<T>>,
    /// How much of [`LAST_CHUNK`] has been swallowed.
    swallowed: usize,
    /// Whether bytes were written since the connection was armed: only a flush after them
    /// flushed the head (hyper also flushes when it has nothing buffered).
    wrote_armed: bool,
}

impl<T> Detachable<T> {
    pub(crate) fn new(io: T, hand: Arc<Handoff<T>>) -> Self {
        Detachable {
            io: Some(io),
            hand,
            swallowed: 0,
            wrote_armed: false,
        }
    }

    fn gone() -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the socket went to an SSE stream",
        )
    }

    /// Swallows what hyper writes after the head: exactly the last chunk.
    fn swallow(&mut self, buf: &[u8]) -> io::Result<usize> {
        let want = &LAST_CHUNK[self.swallowed..];
        let n = buf.len().min(want.len());
        if buf[..n] != want[..n] {
            // Not what hyper writes at the end of a chunked body: the stream cannot be taken
            // over, and the connection is closed (the stream's task sees its sender dropped).
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected bytes after an SSE response head",
            ));
        }
        self.swallowed += n;
        if self.swallowed == LAST_CHUNK.len() {
            self.hand.state.store(DETACHED, Ordering::Release);
        }
        Ok(n)
    }
}

impl<T> Drop for Detachable<T> {
    fn drop(&mut self) {
        match self.hand.state() {
            OPEN => {}
            DETACHED => {
                if let (Some(io), Some(to)) = (self.io.take(), self.hand.lock().to.take()) {
                    // The stream's task may be gone already (its client closed): the socket
                    // is then dropped here.
                    let _ = to.send(io);
                }
            }
            // hyper gave up before the stream could take the socket over (the client closed,
            // or a write failed): the stream's task learns it from the dropped sender.
            _ => drop(self.hand.lock().to.take()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Detachable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match (&mut me.io, me.hand.state()) {
            // hyper reads end-of-file and finishes the connection.
            (_, DETACHED) | (None, _) => Poll::Ready(Ok(())),
            (Some(io), _) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> Detachable<T> {
    /// A write of `bufs` (`write` does it on the socket): passed through until the head is
    /// flushed, then the last chunk is swallowed, and after it nothing is written.
    fn write_with(
        &mut self,
        bufs: &[io::IoSlice<'_>],
        write: impl FnOnce(Pin<&mut T>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match (&mut self.io, self.hand.state()) {
            (Some(io), OPEN) => write(Pin::new(io)),
            (Some(io), ARMED) => {
                let r = write(Pin::new(io));
                self.wrote_armed |= matches!(r, Poll::Ready(Ok(n)) if n > 0);
                r
            }
            (Some(_), HEAD_SENT) => {
                let mut n = 0;
                for b in bufs.iter().filter(|b| !b.is_empty()) {
                    if self.hand.state() != HEAD_SENT {
                        break;
                    }
                    match self.swallow(b) {
                        Ok(k) => n += k,
                        Err(e) if n == 0 => return Poll::Ready(Err(e)),
                        Err(_) => break,
                    }
                }
                Poll::Ready(Ok(n))
            }
            _ => Poll::Ready(Err(Self::gone())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Detachable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(&[io::IoSlice::new(buf)], |io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(bufs, |io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let state = me.hand.state();
        match &mut me.io {
            Some(io) if state <= ARMED => {
                let r = Pin::new(io).poll_flush(cx);
                // Everything hyper had for the SSE response so far, its head, is written.
                if state == ARMED && me.wrote_armed && matches!(r, Poll::Ready(Ok(()))) {
                    me.hand.head_sent();
                }
                r
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match (&mut me.io, me.hand.state()) {
            // The socket is the stream's: hyper must not shut it down.
            (_, HEAD_SENT | DETACHED) | (None, _) => Poll::Ready(Ok(())),
            (Some(io), _) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A duplex stream that says it writes vectored (as a `TcpStream` does), so hyper queues
    /// the head and the body's chunks instead of flattening them.
    struct Vectored(DuplexStream);

    impl AsyncRead for Vectored {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Vectored {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            Pin::new(&mut self.0).poll_write(cx, first)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Serves one connection as the accept loop does, where every request is an SSE request
    /// whose task writes `chunks` once it has the socket. Returns the bytes the client read
    /// until the server closed, whether hyper's connection finished on its own (it let go of
    /// the socket), and how many requests were served.
    async fn serve<T>(io: T, client: DuplexStream, request: &[u8]) -> (String, bool, usize)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let hand = Handoff::<T>::new();
        let served = Arc::new(AtomicUsize::new(0));
        let svc = {
            let (hand, served) = (hand.clone(), served.clone());
            hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                let (hand, served) = (hand.clone(), served.clone());
                async move {
                    if hand.taken() {
                        return Err(io::Error::other("pipelined behind a stream"));
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                    let (socket, body) = hand.arm().expect("not armed yet");
                    tokio::spawn(async move {
                        let Ok(mut s) = socket.await else { return };
                        s.write_all(b"5\r\nhello\r\n").await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
                        s.shutdown().await.unwrap();
                    });
                    let mut r = http::Response::new(body);
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/event-stream"),
                    );
                    Ok(r)
                }
            })
        };
        let conn =
            http1::Builder::new().serve_connection(TokioIo::new(Detachable::new(io, hand)), svc);
        let conn = tokio::spawn(conn);
        let mut client = client;
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("the stream ends")
            .unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(1), conn)
            .await
            .is_ok();
        (
            String::from_utf8(got).unwrap(),
            finished,
            served.load(Ordering::Relaxed),
        )
    }

    const GET: &[u8] = b"GET /k HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n";

    fn check(got: &str) {
        let (head, body) = got.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert!(head.contains("transfer-encoding: chunked"), "{got:?}");
        assert!(!head.contains("content-length"), "{got:?}");
        // hyper's own last chunk was swallowed: the body is exactly what the task wrote.
        assert_eq!(body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn the_stream_takes_the_socket_after_the_head() {
        for vectored in [false, true] {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (got, finished, served) = if vectored {
                serve(Vectored(server), client, GET).await
            } else {
                serve(server, client, GET).await
            };
            check(&got);
            assert!(
                finished,
                "hyper let go of the connection (vectored: {vectored})"
            );
            assert_eq!(served, 1);
        }
    }

    #[tokio::test]
    async fn a_request_pipelined_behind_a_stream_is_not_served() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let two = [
            GET,
            b"PUT /k HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n1",
        ]
        .concat();
        let (got, finished, served) = serve(server, client, &two).await;
        check(&got);
        assert!(finished);
        assert_eq!(served, 1, "the PUT behind the stream was never served");
    }

    #[tokio::test]
    async fn a_socket_hyper_drops_early_never_reaches_the_stream() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let hand = Handoff::<DuplexStream>::new();
        let (socket, _body) = hand.arm().expect("armed once");
        assert!(hand.arm().is_none(), "a connection is taken once");
        assert!(hand.taken());
        // hyper gave up before the head was flushed (the client left).
        drop(Detachable::new(server, hand.clone()));
        drop(client);
        assert!(socket.await.is_err());
    }
}
