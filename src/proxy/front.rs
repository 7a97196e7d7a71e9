//! The connection in front of Pingora's HTTP/1 parser: per-address connection caps, bounded
//! header reads, and request framing checked before anything is parsed.
//!
//! [`Front`] wraps the proxy's [`HttpServerApp`] and runs each HTTP/1 connection's keep-alive
//! loop itself (the loop Pingora's blanket `ServerApp` impl would run). Before each request it
//! reads the request header into a buffer of its own, with:
//!
//! - a deadline: a new connection has `header_timeout` to send its first byte, and every header
//!   has `header_timeout` from its first byte to its end (a slowloris client trickling bytes
//!   is answered 408 and closed), an idle keep-alive connection `keepalive_timeout` to start
//!   its next request (closed silently after);
//! - a size and line-count cap (431);
//! - a framing check on the raw lines ([`HeadScanner`]): `Content-Length` together with
//!   `Transfer-Encoding`, more than one `Content-Length`, a non-numeric one, any
//!   `Transfer-Encoding` other than exactly `chunked`, obsolete line folding and bare-LF line
//!   ends are refused with 400 and the connection closed. Pingora alone would serve CL+TE as
//!   chunked and refuse the rest with an empty 400; here every refusal is in the contract's
//!   JSON shape.
//!
//! The buffered bytes are then replayed to Pingora through [`Prefixed`], so Pingora parses the
//! same bytes it would have read itself (one extra copy of the header, no extra read).
//! HTTP/2 (ALPN `h2`) and h2c connections go to Pingora's own loop unchanged: only the
//! connection cap applies to them (their streams count against the per-address request cap).

use crate::api::error::ApiError;
use crate::app::App;
use crate::config::snapshot::Limits;
use crate::limits::conn::CONNECTIONS;
use super::watchdog::ConnTimer;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use std::time::Instant;
// For the rare waits that need a timer of their own (a header arriving in pieces): Pingora's
// shared 10 ms-tick timer. A tokio timer newly registered as the runtime's earliest wakes its
// I/O driver (an eventfd write); the per-connection timers below are registered once and then
// only moved later, which never does.
use pingora::time::fast_timeout::fast_timeout;

/// The proxy app behind the per-connection defences.
pub struct Front<A> {
    inner: Arc<A>,
    app: Arc<App>,
}

impl<A> Front<A> {
    pub fn new(inner: A, app: Arc<App>) -> Front<A> {
        Front { inner: Arc::new(inner), app }
    }
}

/// What to do after reading (or failing to read) a request header.
enum Next {
    /// A whole header is buffered: hand the connection to Pingora.
    Ready,
    /// The client left, went idle, or the server is shutting down: close without a word.
    Close,
    /// Answer this error and close.
    Refuse(ApiError),
}

#[async_trait]
impl<A> ServerApp for Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Pingora calls this from the task it spawned for the connection, whose future also
        // holds the (finished) TLS handshake's state inline: about 8.6 KB that an idle
        // keep-alive connection would carry for its whole life. Serving the connection from a
        // task of its own, sized for this loop alone, lets Pingora's task end now.
        let front = Arc::clone(self);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut next = front.serve(stream, &shutdown).await;
            while let Some(stream) = next {
                next = front.serve(stream, &shutdown).await;
            }
        });
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A> Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// One connection, from its first byte to its close.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // In a block: the limits must not stay in this future for the connection's life.
        let _slot = {
            let limits = self.app.config.limits();
            match peer {
                Some(ip) => match CONNECTIONS.acquire(ip, limits.max_connections_per_ip) {
                    Some(slot) => slot,
                    None => {
                        log::debug!("refusing a connection from {ip}: {} already open", limits.max_connections_per_ip);
                        let e = ApiError::rate_limited(
                            format!(
                                "too many connections from your address (at most {} at once); close some and retry",
                                limits.max_connections_per_ip
                            ),
                            1,
                        );
                        crate::metrics::count_refusal("connections_per_ip");
                        if !is_h2(&stream) {
                            let mut stream = stream;
                            Box::pin(refuse(&mut stream, &e, &limits)).await;
                        }
                        return None;
                    }
                },
                None => None,
            }
        };
        let opts = self.inner.server_options();
        let h2c_or_custom = opts.is_some_and(|o| o.h2c || o.force_custom);
        if is_h2(&stream) || h2c_or_custom || matches!(stream.selected_alpn_proto(), Some(ALPN::Custom(_))) {
            return self.inner.process_new(stream, shutdown).await;
        }

        let mut shutdown_rx = shutdown.clone();
        // Boxed once for the connection's life: Pingora takes the stream as a `Box<dyn IO>` for
        // each request and hands the same box back.
        let mut stream = Box::new(Prefixed::new(stream));
        let mut persistent = None;
        let mut fresh = true;
        // The wait for each request's first byte, one timer for the connection's life (see
        // `read_head`). Created unarmed: nothing is registered until it is first awaited.
        let mut waiting = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        // The upstream watchdog's timer, shared the same way by the connection's requests.
        let watchdog_timer = ConnTimer::default();
        loop {
            // Read per request: a reload applies to the next request of a kept-alive
            // connection.
            let limits = self.app.config.limits();
            match read_head(&mut stream, &limits, fresh, waiting.as_mut(), &mut shutdown_rx).await {
                Next::Ready => {}
                Next::Close => return None,
                Next::Refuse(e) => {
                    log::debug!("refusing a request from {peer:?}: {}", e.message);
                    Box::pin(refuse(&mut stream, &e, &limits)).await;
                    return None;
                }
            }
            // The session is built in a block of its own so that it is not kept in this
            // future across the await (the future's size is that of its largest state, and
            // a whole `ServerSession` would widen every idle connection's task).
            let serving = {
                let mut session = ServerSession::new_http1(stream);
                match persistent.take() {
                    Some(p) => pingora::apps::HttpPersistentSettings::apply_to_session(p, &mut session),
                    None => {
                        // What Pingora's own loop sets on a new connection.
                        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                        session.set_keepalive_reuses_remaining(opts.and_then(|o| o.keepalive_request_limit));
                    }
                }
                watchdog_timer.scope(self.inner.process_new_http(session, shutdown))
            };
            let reused = serving.await?;
            let (next, settings) = reused.consume();
            // The stream Pingora hands back is the one given to it.
            stream = next.into_any().downcast::<Prefixed>().ok()?;
            persistent = settings;
            fresh = false;
            if *shutdown.borrow() {
                return None;
            }
        }
    }
}

fn is_h2(stream: &Stream) -> bool {
    matches!(stream.selected_alpn_proto(), Some(ALPN::H2))
}

/// Buffer one request header (see the module doc for the bounds).
///
/// `waiting` bounds the wait for the request's first byte. It is the connection's one tokio
/// timer, moved later before each wait: a tokio timer whose deadline only moves later is
/// extended in place (an atomic store; the timer wheel looks again when the old deadline
/// comes), where a timer per wait, Pingora's or tokio's, is registered and cancelled for
/// every request of a kept-alive connection.
async fn read_head(
    s: &mut Prefixed,
    limits: &Limits,
    fresh: bool,
    mut waiting: Pin<&mut tokio::time::Sleep>,
    shutdown: &mut ShutdownWatch,
) -> Next {
    if s.buf.is_empty() {
        // Waiting for a request to start: a new connection gets the header timeout, an idle
        // kept-alive one the keep-alive timeout. Shutdown closes idle connections at once.
        let idle = if fresh { limits.header_timeout } else { limits.keepalive_timeout };
        waiting.as_mut().reset(tokio::time::Instant::now() + idle);
        tokio::select! {
            biased;
            r = s.fill_first() => match r {
                Ok(n) if n > 0 => {}
                _ => return Next::Close,
            },
            _ = waiting => return Next::Close,
            _ = shutdown.changed() => return Next::Close,
        }
    }
    let deadline = Instant::now() + limits.header_timeout;
    let mut scan = HeadScanner::default();
    loop {
        match scan.scan(&s.buf, limits.max_header_bytes, limits.max_headers) {
            Scan::Complete => {
                return match super::head_syntax::check(&s.buf) {
                    None => Next::Ready,
                    Some(e) => Next::Refuse(e),
                }
            }
            Scan::Refuse(e) => return Next::Refuse(e),
            Scan::Partial => {}
        }
        match fast_timeout(deadline.saturating_duration_since(Instant::now()), s.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Next::Close,
            Err(_) => {
                crate::metrics::count_refusal("header_timeout");
                return Next::Refuse(ApiError::new(
                    408,
                    "invalid_request",
                    format!("request header not received within {} s", limits.header_timeout.as_secs_f64()),
                ));
            }
        }
    }
}

/// Write a refusal, then let the client read it: stop writing and swallow what it still sends
/// for a moment (closing with unread bytes would reset the connection under the answer).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(stream: &mut S, e: &ApiError, limits: &Limits) {
    const DRAIN_FOR: Duration = Duration::from_secs(1);
    const DRAIN_MAX: usize = 64 * 1024;
    let body = e.body();
    let reason = http::StatusCode::from_u16(e.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        e.status,
        body.len()
    );
    if let Some(secs) = e.retry_after {
        head.push_str(&format!("retry-after: {secs}\r\n"));
    }
    head.push_str("\r\n");
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(limits.write_timeout, write).await, Ok(Ok(()))) {
        return;
    }
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < DRAIN_MAX {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
}

/// Progress of [`HeadScanner::scan`].
#[derive(Debug)]
pub enum Scan {
    /// The header is not complete yet.
    Partial,
    /// The header is complete and acceptable.
    Complete,
    Refuse(ApiError),
}

/// Checks a request header's lines as they arrive: where it ends, its size and line count, and
/// how its body is framed. Resumable: each call scans only the lines completed since the last.
#[derive(Debug, Default)]
pub struct HeadScanner {
    /// Start of the first line not yet scanned.
    pos: usize,
    /// Lines scanned, the request line included.
    lines: usize,
    content_length: u32,
    transfer_encoding: u32,
}

fn bad_framing(message: &str) -> Scan {
    crate::metrics::count_refusal("framing");
    Scan::Refuse(ApiError::invalid_request(message.to_string()))
}

fn too_large(message: String) -> Scan {
    crate::metrics::count_refusal("header_too_large");
    Scan::Refuse(ApiError::new(431, "request_too_large", message))
}

impl HeadScanner {
    pub fn scan(&mut self, buf: &[u8], max_bytes: usize, max_headers: usize) -> Scan {
        while let Some(i) = memchr::memchr(b'\n', &buf[self.pos..]) {
            let end = self.pos + i;
            let start = std::mem::replace(&mut self.pos, end + 1);
            if end > max_bytes {
                break;
            }
            let Some(line) = buf[start..end].strip_suffix(b"\r") else {
                return bad_framing("request header lines must end with CRLF");
            };
            if line.is_empty() {
                if self.lines == 0 {
                    // An empty line before the request line is tolerated (RFC 9112 §2.2).
                    continue;
                }
                return self.finish();
            }
            self.lines += 1;
            if self.lines == 1 {
                continue; // the request line; Pingora parses it
            }
            if self.lines - 1 > max_headers {
                return too_large(format!("request has more than {max_headers} header lines"));
            }
            if matches!(line[0], b' ' | b'\t') {
                return bad_framing("obsolete line folding in a request header");
            }
            if let Some(value) = value_of(line, b"content-length:") {
                self.content_length += 1;
                if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return bad_framing("Content-Length must be one decimal number");
                }
            } else if let Some(value) = value_of(line, b"transfer-encoding:") {
                self.transfer_encoding += 1;
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return bad_framing("Transfer-Encoding must be exactly 'chunked'");
                }
            }
        }
        if self.pos > max_bytes || buf.len() > max_bytes {
            return too_large(format!("request header is larger than {max_bytes} bytes"));
        }
        Scan::Partial
    }

    fn finish(&self) -> Scan {
        if self.content_length > 0 && self.transfer_encoding > 0 {
            return bad_framing("a request must not carry both Content-Length and Transfer-Encoding");
        }
        if self.content_length > 1 {
            return bad_framing("more than one Content-Length header");
        }
        if self.transfer_encoding > 1 {
            return bad_framing("Transfer-Encoding must be exactly 'chunked'");
        }
        Scan::Complete
    }
}

/// The trimmed value of a header line whose name is `name` (lower case, with its colon).
#[inline]
fn value_of<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
        Some(line[name.len()..].trim_ascii())
    } else {
        None
    }
}

/// A connection whose first bytes were already read: they are served again before the socket.
///
/// It also gathers what Pingora writes until Pingora flushes (a response's header and body
/// leave in one send, one TLS record over TLS), the job of the socket-level write buffer,
/// which the listeners leave out (`tls::listener`): that one is allocated for every accepted
/// connection and kept while it idles; this one exists only between a write and its flush.
#[derive(Debug)]
pub struct Prefixed {
    inner: Stream,
    buf: BytesMut,
    /// Written and not yet sent; no capacity between responses.
    out: BytesMut,
}

/// Writes this large (or larger) skip the gathering buffer.
const GATHER_MAX: usize = 8 * 1024;

impl Prefixed {
    pub fn new(inner: Stream) -> Prefixed {
        Prefixed { inner, buf: BytesMut::new(), out: BytesMut::new() }
    }

    /// Send everything gathered.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Wait for a request to start, holding no heap buffer meanwhile: thousands of idle
    /// keep-alive connections would otherwise each keep one (see `tls::listener`).
    /// The read lands in a buffer on the stack of the poll that finds data, not in this
    /// future: a buffer held across the wait would be part of every idle connection's task.
    async fn fill_first(&mut self) -> io::Result<usize> {
        self.buf = BytesMut::new();
        std::future::poll_fn(|cx| {
            let mut first = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
            let mut read = ReadBuf::uninit(&mut first);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            self.buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
        .await
    }

    /// Read more from the socket into the buffer.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(4096);
        self.inner.read_buf(&mut self.buf).await
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let n = out.remaining().min(self.buf.len());
            out.put_slice(&self.buf[..n]);
            self.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.out.len() + buf.len() > GATHER_MAX {
            std::task::ready!(self.poll_send_gathered(cx))?;
        }
        if buf.len() >= GATHER_MAX {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + total > GATHER_MAX {
            std::task::ready!(self.poll_send_gathered(cx))?;
        }
        if total >= GATHER_MAX {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send_gathered(cx))?;
        // Idle connections keep no write buffer.
        self.out = BytesMut::new();
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Prefixed {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Prefixed {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Prefixed {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Prefixed {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Prefixed {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Prefixed {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Prefixed {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.buf.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = buf.len().min(self.buf.len());
        buf[..n].copy_from_slice(&self.buf[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(raw: &str) -> Scan {
        HeadScanner::default().scan(raw.as_bytes(), 32 * 1024, 100)
    }

    fn refused(raw: &str) -> (u16, String) {
        match scan(raw) {
            Scan::Refuse(e) => (e.status, e.message),
            other => panic!("{raw:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn ordinary_headers_pass_and_partial_waits() {
        assert!(matches!(scan("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Scan::Complete));
        assert!(matches!(scan("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), Scan::Complete));
        assert!(matches!(scan("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"), Scan::Complete));
        assert!(matches!(scan("POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n"), Scan::Complete));
        assert!(matches!(scan("GET / HTTP/1.1\r\nHost: x\r\n"), Scan::Partial));
        assert!(matches!(scan("GET / HTTP/1.1\r\nHo"), Scan::Partial));
    }

    #[test]
    fn resumes_across_reads() {
        let full = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = HeadScanner::default();
        for cut in [5, 20, 40, 60] {
            assert!(matches!(s.scan(&full[..cut], 1024, 10), Scan::Partial), "cut at {cut}");
        }
        assert!(matches!(s.scan(full, 1024, 10), Scan::Refuse(_)), "CL+TE seen across reads");
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "POST / HTTP/1.1\nHost: x\n\n",
        ] {
            assert_eq!(refused(raw).0, 400, "{raw:?}");
        }
    }

    #[test]
    fn size_and_count_caps_are_431() {
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(101));
        assert_eq!(refused(&many).0, 431);
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024));
        assert_eq!(refused(&big).0, 431);
        let unterminated = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(40 * 1024));
        assert_eq!(refused(&unterminated).0, 431, "no line end yet, already over");
    }
}
