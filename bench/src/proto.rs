//! Minimal raw-protocol clients, the same weight for every system: HTTP/1.1 with keep-alive,
//! WebSocket (tokio-tungstenite), SSE, RESP (Redis), the NATS text protocol, and etcd's JSON
//! gateway. Each subscriber reports the messages it sees through a marker `#<i>:<t>#` that the
//! writer puts in every value, found by a byte scan (no JSON parsing on the hot path).

use std::io;
use std::net::SocketAddr;

use base64::Engine as _;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The value every writer sends: a marker with the message number and send time (ns).
pub fn marker(i: u64, t: u64) -> String {
    format!("#{i}:{t}#")
}

/// Finds every `#i:t#` marker in `buf`.
pub fn scan(buf: &[u8], mut f: impl FnMut(u64, u64)) {
    let mut k = 0;
    while k < buf.len() {
        if buf[k] == b'#' {
            let (mut i, mut j) = (0u64, k + 1);
            let start = j;
            while j < buf.len() && buf[j].is_ascii_digit() {
                i = i * 10 + (buf[j] - b'0') as u64;
                j += 1;
            }
            if j > start && j < buf.len() && buf[j] == b':' {
                let (mut t, s2) = (0u64, j + 1);
                j += 1;
                while j < buf.len() && buf[j].is_ascii_digit() {
                    t = t * 10 + (buf[j] - b'0') as u64;
                    j += 1;
                }
                if j > s2 && j < buf.len() && buf[j] == b'#' {
                    f(i, t);
                    k = j + 1;
                    continue;
                }
            }
        }
        k += 1;
    }
}

/// A keep-alive HTTP/1.1 connection. The request is written from a buffer reused across
/// requests and the response head is parsed in place in the read buffer, as lean as the RESP
/// client below: on a 2-core machine the load generator's own cost per request is part of
/// every system's result.
pub struct Http {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    host: String,
    out: Vec<u8>,
}

/// Where the blank line that ends an HTTP head is, if `buf` holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Status, content length and whether the body is chunked, from a complete response head.
fn parse_head(head: &[u8]) -> io::Result<(u16, usize, bool)> {
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .ok_or_else(|| {
            io::Error::other(format!(
                "bad status line {:?}",
                String::from_utf8_lossy(status_line)
            ))
        })?;
    let (mut len, mut chunked) = (0usize, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            len = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"))
        {
            chunked = true;
        }
    }
    Ok((status, len, chunked))
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> io::Result<Http> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Http {
            r: BufReader::with_capacity(16 << 10, r),
            w,
            host: addr.to_string(),
            out: Vec::with_capacity(512),
        })
    }

    /// Sends one request and reads the whole response; returns (status, body).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let status = self
            .exchange(method, path, ctype, body, Some(&mut out))
            .await?;
        Ok((status, out))
    }

    /// Sends one request and reads the whole response, keeping only its status.
    pub async fn request_status(
        &mut self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
    ) -> io::Result<u16> {
        self.exchange(method, path, ctype, body, None).await
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
        keep: Option<&mut Vec<u8>>,
    ) -> io::Result<u16> {
        self.out.clear();
        self.queue(method, path, ctype, body)?;
        self.w.write_all(&self.out).await?;
        self.response(keep).await
    }

    /// Sends `depth` requests in one write without waiting (HTTP/1.1 pipelining), then reads
    /// their `depth` responses, in order; returns how many answered 200.
    pub async fn pipelined(
        &mut self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
        depth: usize,
    ) -> io::Result<usize> {
        self.out.clear();
        for _ in 0..depth {
            self.queue(method, path, ctype, body)?;
        }
        self.w.write_all(&self.out).await?;
        let mut ok = 0;
        for _ in 0..depth {
            ok += usize::from(self.response(None).await? == 200);
        }
        Ok(ok)
    }

    // Appends a request to the output buffer.
    fn queue(&mut self, method: &str, path: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.out.extend_from_slice(body);
        Ok(())
    }

    // Reads one response; its body goes to `keep` when given.
    async fn response(&mut self, keep: Option<&mut Vec<u8>>) -> io::Result<u16> {
        // The head, parsed where it lies in the read buffer (no line-by-line copies).
        let buf = self.r.fill_buf().await?;
        let (status, len, chunked) = match head_end(buf) {
            Some(end) => {
                // Consumed even when it does not parse, so a bad reply is not read again.
                let head = parse_head(&buf[..end]);
                self.r.consume(end);
                head?
            }
            None => self.split_head().await?,
        };
        match keep {
            Some(out) => {
                if chunked {
                    read_chunked(&mut self.r, out, true).await?;
                } else {
                    let start = out.len();
                    out.resize(start + len, 0);
                    self.r.read_exact(&mut out[start..]).await?;
                }
            }
            None if chunked => {
                let mut sink = Vec::new();
                read_chunked(&mut self.r, &mut sink, true).await?;
            }
            None => {
                let mut left = len;
                while left > 0 {
                    let b = self.r.fill_buf().await?;
                    if b.is_empty() {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let n = b.len().min(left);
                    self.r.consume(n);
                    left -= n;
                }
            }
        }
        Ok(status)
    }

    /// A head that did not arrive in one read: gathered across reads (rare).
    async fn split_head(&mut self) -> io::Result<(u16, usize, bool)> {
        let mut head = Vec::new();
        loop {
            let b = self.r.fill_buf().await?;
            if b.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let (before, n) = (head.len(), b.len());
            head.extend_from_slice(b);
            if let Some(end) = head_end(&head) {
                self.r.consume(end - before);
                return parse_head(&head[..end]);
            }
            self.r.consume(n);
            if head.len() > 64 << 10 {
                return Err(io::Error::other("response head over 64 KiB"));
            }
        }
    }
}

/// Reads chunks into `out`; with `all` until the terminating chunk, else just one chunk.
async fn read_chunked<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    all: bool,
) -> io::Result<bool> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(io::Error::other)?;
        let start = out.len();
        out.resize(start + size, 0);
        r.read_exact(&mut out[start..]).await?;
        line.clear();
        r.read_line(&mut line).await?;
        if size == 0 {
            return Ok(false);
        }
        if !all {
            return Ok(true);
        }
    }
}

/// Opens an HTTP stream (SSE or etcd watch) and calls `f` with each chunk of body bytes.
pub async fn http_stream(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
    mut f: impl FnMut(&[u8]) -> bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> io::Result<()> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(4096, r);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    w.write_all(&req).await?;
    let mut line = String::new();
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim_end().is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("transfer-encoding:")
            && line.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let _ = ready.send(());
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        if chunked {
            if !read_chunked(&mut r, &mut buf, false).await? {
                return Ok(());
            }
        } else {
            let mut tmp = [0u8; 4096];
            let n = r.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        if !f(&buf) {
            return Ok(());
        }
    }
}

/// A WebSocket subscription; calls `f` with each data frame until it returns false.
pub async fn ws_subscribe(
    url: &str,
    mut f: impl FnMut(&[u8]) -> bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| e.to_string())?;
    let _ = ready.send(());
    while let Some(m) = ws.next().await {
        let m = m.map_err(|e| e.to_string())?;
        if (m.is_binary() || m.is_text()) && !f(&m.into_data()) {
            return Ok(());
        }
    }
    Ok(())
}

/// RESP: encodes a command.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    resp_into(&mut out, args);
    out
}

/// RESP: encodes a command at the end of `out`.
fn resp_into(out: &mut Vec<u8>, args: &[&[u8]]) {
    use std::io::Write as _;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A Redis connection for commands with simple replies (SET, PUBLISH), as lean as [`Http`]:
/// one reused output buffer, the reply line checked in the read buffer.
pub struct Redis {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    out: Vec<u8>,
}

impl Redis {
    pub async fn connect(addr: SocketAddr) -> io::Result<Redis> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Redis {
            r: BufReader::with_capacity(16 << 10, r),
            w,
            out: Vec::with_capacity(512),
        })
    }

    /// Sends a command `depth` times in one write without waiting (pipelining), then reads the
    /// `depth` one-line replies; an error reply is an error.
    pub async fn pipelined(&mut self, args: &[&[u8]], depth: usize) -> io::Result<()> {
        self.out.clear();
        for _ in 0..depth {
            resp_into(&mut self.out, args);
        }
        self.w.write_all(&self.out).await?;
        for _ in 0..depth {
            self.reply().await?;
        }
        Ok(())
    }

    /// Sends a command whose reply is a bulk string (`GET`) and reads the reply where it lies in
    /// the read buffer; returns the string's length. A nil reply (`$-1`: no such key) or an
    /// error reply is an error.
    pub async fn bulk(&mut self, args: &[&[u8]]) -> io::Result<usize> {
        self.out.clear();
        resp_into(&mut self.out, args);
        self.w.write_all(&self.out).await?;
        let buf = self.r.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let len = match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let len = bulk_len(&buf[..nl]);
                self.r.consume(nl + 1);
                len?
            }
            None => {
                // A first line split across reads (rare).
                let mut line = Vec::new();
                self.r.read_until(b'\n', &mut line).await?;
                bulk_len(line.strip_suffix(b"\n").unwrap_or(&line))?
            }
        };
        // The string and its CRLF, however the reads split them.
        let mut left = len + 2;
        while left > 0 {
            let n = self.r.fill_buf().await?.len().min(left);
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.r.consume(n);
            left -= n;
        }
        Ok(len)
    }

    /// Sends a command and reads a one-line reply (`+OK`, `:n`); an error reply is an error.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.out.clear();
        resp_into(&mut self.out, args);
        self.w.write_all(&self.out).await?;
        self.reply().await
    }

    // Reads one one-line reply.
    async fn reply(&mut self) -> io::Result<()> {
        let buf = self.r.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let error = (buf[0] == b'-').then(|| String::from_utf8_lossy(&buf[..nl]).into_owned());
            // Consumed either way: the next command reads its own reply.
            self.r.consume(nl + 1);
            return match error {
                Some(e) => Err(io::Error::other(e)),
                None => Ok(()),
            };
        }
        // A reply split across reads (rare).
        let mut line = Vec::new();
        if self.r.read_until(b'\n', &mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.first() == Some(&b'-') {
            return Err(io::Error::other(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
        Ok(())
    }
}

// The length in a bulk reply's first line (`$41`, with or without its `\r`).
fn bulk_len(line: &[u8]) -> io::Result<usize> {
    let text = String::from_utf8_lossy(line);
    text.strip_prefix('$')
        .and_then(|n| n.trim_end().parse::<usize>().ok())
        .ok_or_else(|| io::Error::other(format!("not a bulk string: {}", text.trim_end())))
}

/// Subscribes on a raw TCP protocol (Redis SUBSCRIBE/PSUBSCRIBE, NATS SUB): sends `hello`, waits
/// for `ack` in the reply stream, then calls `f` with everything read.
pub async fn tcp_subscribe(
    addr: SocketAddr,
    hello: Vec<u8>,
    ack: &'static [u8],
    mut f: impl FnMut(&[u8]) -> bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&hello).await?;
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    let mut pending: Vec<u8> = Vec::with_capacity(8192);
    let mut ready = Some(ready);
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &buf[..n];
        if let Some(r) = ready.take() {
            seen.extend_from_slice(chunk);
            if let Some(p) = seen.windows(ack.len()).position(|w| w == ack) {
                let _ = r.send(());
                // Whatever followed the acknowledgement in this read is data.
                let after = p + ack.len();
                if after < seen.len() {
                    let rest = seen[after..].to_vec();
                    pending.extend_from_slice(&rest);
                }
                continue;
            } else {
                ready = Some(r);
                continue;
            }
        }
        // NATS pings its clients; answer so it keeps us.
        if chunk.starts_with(b"PING") {
            s.write_all(b"PONG\r\n").await?;
        }
        // A marker may be split across two reads: keep an unfinished tail for the next read.
        pending.extend_from_slice(chunk);
        let keep = unfinished_tail(&pending);
        let more = f(&pending[..keep]);
        pending.drain(..keep);
        if !more {
            return Ok(());
        }
    }
}

/// Where an unfinished marker (`#digits` or `#digits:digits` without its closing `#`) starts at
/// the end of `buf`, or `buf.len()` if there is none.
pub fn unfinished_tail(buf: &[u8]) -> usize {
    let from = buf.len().saturating_sub(48);
    match buf[from..].iter().rposition(|c| *c == b'#') {
        Some(p) => {
            let at = from + p;
            let rest = &buf[at + 1..];
            if rest.iter().all(|c| c.is_ascii_digit() || *c == b':') {
                at
            } else {
                buf.len()
            }
        }
        None => buf.len(),
    }
}

/// The bytes of a WebSocket upgrade request (the server's frames are then read raw: they are
/// unmasked, so markers can be scanned in place without decoding frames).
pub fn ws_upgrade(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// An etcd watch on `key` (with `prefix`, on every key starting with it) through the JSON gateway.
pub async fn etcd_watch(
    addr: SocketAddr,
    key: &str,
    prefix: bool,
    f: impl FnMut(&[u8]) -> bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> io::Result<()> {
    let mut body = format!("{{\"create_request\":{{\"key\":\"{}\"", b64(key.as_bytes()));
    if prefix {
        let mut end = key.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        body.push_str(&format!(",\"range_end\":\"{}\"", b64(&end)));
    }
    body.push_str("}}");
    http_stream(
        addr,
        "POST",
        "/v3/watch",
        "Content-Type: application/json\r\n",
        body.as_bytes(),
        f,
        ready,
    )
    .await
}

/// A NATS subscription on `subject`.
pub async fn nats_subscribe(
    addr: SocketAddr,
    subject: &str,
    f: impl FnMut(&[u8]) -> bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> io::Result<()> {
    let hello =
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n")
            .into_bytes();
    tcp_subscribe(addr, hello, b"PONG", f, ready).await
}

/// Base64, for etcd's JSON gateway.
pub fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Decodes every `"value":"<base64>"` in an etcd watch chunk and scans it for markers.
pub fn scan_etcd(chunk: &[u8], mut f: impl FnMut(u64, u64), mut bytes: impl FnMut(usize)) {
    let pat = b"\"value\":\"";
    let mut k = 0;
    while let Some(p) = chunk[k..].windows(pat.len()).position(|w| w == pat) {
        let start = k + p + pat.len();
        let end = chunk[start..]
            .iter()
            .position(|c| *c == b'"')
            .map_or(chunk.len(), |e| start + e);
        if let Ok(v) = base64::engine::general_purpose::STANDARD.decode(&chunk[start..end]) {
            bytes(v.len());
            scan(&v, &mut f);
        }
        k = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_parsed_in_place() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 14\r\n\r\n{\"index\":\"w1\"}";
        let end = head_end(r).expect("a complete head");
        assert_eq!(&r[end..], br#"{"index":"w1"}"#);
        assert_eq!(parse_head(&r[..end]).unwrap(), (200, 14, false));
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(parse_head(c).unwrap(), (404, 0, true));
        assert!(head_end(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n").is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn markers_are_found_in_any_framing() {
        let mut got = Vec::new();
        scan(
            br##"[{"op":"replace","path":"/data/m","value":"#12:345#"}] #x:1# #7:8#"##,
            |i, t| got.push((i, t)),
        );
        assert_eq!(got, [(12, 345), (7, 8)]);
        let mut n = 0;
        let chunk = format!(
            r#"{{"result":{{"events":[{{"kv":{{"value":"{}"}}}}]}}}}"#,
            b64(b"#3:4#")
        );
        scan_etcd(chunk.as_bytes(), |i, _| n += i, |_| {});
        assert_eq!(n, 3);
        assert_eq!(resp(&[b"SET", b"k"]), b"*2\r\n$3\r\nSET\r\n$1\r\nk\r\n");
        assert_eq!(unfinished_tail(b"ab #12:3"), 3);
        assert_eq!(unfinished_tail(b"ab #12:3# x"), 11);
        assert_eq!(unfinished_tail(b"ab #"), 3);
    }
}
