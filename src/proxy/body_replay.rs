//! Resending a rewritten request body of any size on every upstream attempt.
//!
//! Pingora replays a request body to the upstream from its retry buffer, which holds only
//! 64 KiB (`BODY_BUF_LIMIT` in pingora-core). The gateway must read the whole body in
//! `request_filter` (the route depends on `model`), so for a larger body the buffer is
//! truncated, `proxy_h1` never calls `request_body_filter`, the downstream is already done,
//! and the upstream waits forever for a body that never comes (pingora issue #349).
//!
//! [`BodyReplaySession`] wraps the real downstream session in Pingora's custom-session
//! trait: every call is delegated to the real session, except that the request body is
//! reported as fully read and [`get_retry_buffer`](CustomSession::get_retry_buffer) returns
//! the rewritten body. Pingora then sends exactly that body on every attempt, whatever its
//! size. The real session is put back ([`ReplaySlot::restore`]) in `logging` and first thing in
//! `fail_to_proxy`, because a custom session's `finish()` returns no reusable connection:
//! without the swap, keep-alive would be lost and error replies would lack `Connection: close`.
//!
//! Pingora is pinned to an exact version in Cargo.toml: a new defaulted method on the trait
//! would otherwise silently not be delegated.

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use super::watchdog::{Alarm, Watchdog};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stream type of Pingora's custom-message API, named once.
type BoxedBodyStream =
    Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>;

/// Where the wrapper hands the real session back when it is dropped, and the body it replays.
///
/// A `Box<dyn CustomSession>` cannot be downcast (the trait has no `Any` bound), so the way
/// back is the wrapper's `Drop`: swapping a placeholder in drops the wrapper, which moves the
/// real session into this slot, and the slot puts it back.
///
/// The body is shared with the wrapper so that each upstream attempt can replay its own
/// rewrite of the request (failover to a route with another wire format or upstream model):
/// [`ReplaySlot::set_body`] before Pingora reads the retry buffer (i.e. in `upstream_peer`).
#[derive(Default)]
pub struct ReplaySlot {
    shared: Arc<Shared>,
}

/// What the slot and the wrapper share: one allocation per request.
#[derive(Default)]
struct Shared {
    /// Where the wrapper's `Drop` leaves the real session.
    session: Mutex<Option<ServerSession>>,
    body: Mutex<Bytes>,
    frame: AtomicBool,
}

impl ReplaySlot {
    /// Put `body` in front of the real downstream session. Call after the whole body was read.
    pub fn install(session: &mut Session, body: Bytes) -> ReplaySlot {
        Self::install_with(session, body, None)
    }

    /// [`install`](Self::install), with a watchdog whose deadlines fail the wait for the
    /// upstream (see `proxy::watchdog`).
    pub fn install_with(session: &mut Session, body: Bytes, watch: Option<Arc<Watchdog>>) -> ReplaySlot {
        let slot = ReplaySlot {
            shared: Arc::new(Shared { session: Mutex::new(None), body: Mutex::new(body), frame: AtomicBool::new(false) }),
        };
        let real = std::mem::replace(&mut *session.downstream_session, detached_session());
        let wrapper = BodyReplaySession {
            inner: Some(real),
            shared: slot.shared.clone(),
            watch,
            alarm: Alarm::for_this_connection(),
            pending: None,
        };
        *session.downstream_session = ServerSession::new_custom(Box::new(wrapper));
        slot
    }

    /// The body the next attempt sends.
    pub fn set_body(&self, body: Bytes) {
        *self.shared.body.lock().unwrap_or_else(|p| p.into_inner()) = body;
    }

    /// Whether the next response header is held until its whole (rewritten) body is known, to
    /// be sent with a `Content-Length` (see [`BodyReplaySession::response_duplex_vec`]). Set
    /// for every response, since failover may bring another kind of answer.
    pub fn frame_whole_body(&self, on: bool) {
        self.shared.frame.store(on, Ordering::Relaxed);
    }

    /// Swap the real downstream session back in. Call once; later calls do nothing.
    pub fn restore(&self, session: &mut Session) {
        if !session.downstream_session.is_custom() {
            return;
        }
        // Dropping the wrapper fills the slot.
        drop(std::mem::replace(&mut *session.downstream_session, detached_session()));
        let real = self.shared.session.lock().ok().and_then(|mut s| s.take());
        match real {
            Some(real) => *session.downstream_session = real,
            None => log::error!("body replay: the real downstream session was not handed back"),
        }
    }
}

fn detached_session() -> ServerSession {
    ServerSession::new_custom(Box::new(Detached))
}

pub struct BodyReplaySession {
    /// Always `Some` until `Drop` moves it into the shared slot.
    inner: Option<ServerSession>,
    /// The body to replay, the slot for the real session and the framing switch.
    shared: Arc<Shared>,
    watch: Option<Arc<Watchdog>>,
    /// The watchdog's sleep, kept between Pingora's calls of `read_body_or_idle`.
    alarm: Alarm,
    /// A response header held back until the body's length is known.
    pending: Option<Box<ResponseHeader>>,
}

impl Drop for BodyReplaySession {
    fn drop(&mut self) {
        if let (Some(inner), Ok(mut slot)) = (self.inner.take(), self.shared.session.lock()) {
            *slot = Some(inner);
        }
    }
}

impl BodyReplaySession {
    fn s(&self) -> &ServerSession {
        self.inner.as_ref().expect("inner is Some until drop")
    }
    fn m(&mut self) -> &mut ServerSession {
        self.inner.as_mut().expect("inner is Some until drop")
    }
    fn body(&self) -> Bytes {
        self.shared.body.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A held header that must go out before its body is complete: frame the body as chunks
    /// (HTTP/1; HTTP/2 frames itself).
    fn release_chunked(&mut self, mut header: Box<ResponseHeader>) -> Box<ResponseHeader> {
        if self.s().req_header().version != http::Version::HTTP_2 {
            let _ = header.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        header
    }

    /// Hold a JSON answer's header until its rewritten body is complete, then send both with a
    /// `Content-Length`: one write to the client instead of three (header flushed because its
    /// length is unknown, the body chunk, the last chunk), which is most of what a small
    /// non-streamed answer costs beyond Pingora's own pass-through. The gateway only ever
    /// releases such a body at its end (it collects it to rewrite it), so nothing is delayed.
    /// Anything unexpected (another task first) releases the header as a chunked one.
    fn frame_tasks(&mut self, tasks: Vec<HttpTask>) -> Vec<HttpTask> {
        let mut out = Vec::with_capacity(tasks.len() + 1);
        for task in tasks {
            match task {
                HttpTask::Header(h, false)
                    if self.pending.is_none()
                        && self.shared.frame.load(Ordering::Relaxed)
                        && !h.status.is_informational() =>
                {
                    self.pending = Some(h);
                }
                HttpTask::Body(None, false) if self.pending.is_some() => {}
                HttpTask::Body(data, true) if self.pending.is_some() => {
                    let mut h = self.pending.take().expect("checked");
                    let len = data.as_ref().map_or(0, |d| d.len());
                    super::header_parts::edit_response(&mut h, |parts| {
                        parts.headers.remove(http::header::TRANSFER_ENCODING);
                        parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
                    });
                    out.push(HttpTask::Header(h, false));
                    out.push(HttpTask::Body(data, true));
                }
                other => {
                    if let Some(h) = self.pending.take() {
                        let h = self.release_chunked(h);
                        out.push(HttpTask::Header(h, false));
                    }
                    out.push(other);
                }
            }
        }
        out
    }
}

#[async_trait]
impl CustomSession for BodyReplaySession {
    fn req_header(&self) -> &RequestHeader {
        self.s().req_header()
    }
    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.m().req_header_mut()
    }
    // The body was consumed in request_filter; Pingora only ever gets it from the retry buffer.
    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }
    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }
    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.m().write_response_header(resp).await?;
        if end {
            self.m().finish_body().await?;
        }
        Ok(())
    }
    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.m().write_response_header_ref(resp).await?;
        if end {
            self.m().finish_body().await?;
        }
        Ok(())
    }
    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.m().write_response_body(data, end).await
    }
    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.m().write_response_trailers(trailers).await
    }
    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let tasks = self.frame_tasks(tasks);
        if tasks.is_empty() {
            return Ok(false);
        }
        self.m().response_duplex_vec(tasks).await
    }
    fn proxy_tasks_enabled(&self) -> bool {
        self.s().supports_proxy_task_api()
    }
    fn set_proxy_tasks_enabled(&mut self, enabled: bool) {
        self.m().set_proxy_tasks_enabled(enabled)
    }
    fn send_proxy_task(&mut self, task: HttpTask) {
        // This path writes tasks one at a time: no header is held back, only framed.
        let task = match task {
            HttpTask::Header(h, end) if self.shared.frame.load(Ordering::Relaxed) => {
                HttpTask::Header(self.release_chunked(h), end)
            }
            other => other,
        };
        self.m().send_downstream_proxy_task(task)
    }
    fn has_pending_proxy_tasks(&self) -> bool {
        self.s().has_pending_downstream_proxy_tasks()
    }
    async fn write_proxy_tasks(&mut self) -> Result<bool> {
        self.m().write_downstream_proxy_tasks().await
    }
    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.m().set_read_timeout(timeout)
    }
    fn get_read_timeout(&self) -> Option<Duration> {
        self.s().get_read_timeout()
    }
    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.m().set_write_timeout(timeout)
    }
    fn get_write_timeout(&self) -> Option<Duration> {
        self.s().get_write_timeout()
    }
    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.m().set_total_drain_timeout(timeout)
    }
    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.s().get_total_drain_timeout()
    }
    fn request_summary(&self) -> String {
        self.s().request_summary()
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        // A held header counts as written: Pingora must not answer over it, and failover
        // decisions stay as they were when it went out at once.
        self.pending.as_deref().or_else(|| self.s().response_written())
    }
    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.m().shutdown().await
    }
    async fn abandon(&mut self, _ctx: &str) {
        self.m().shutdown().await
    }
    fn is_body_done(&mut self) -> bool {
        true
    }
    async fn finish(&mut self) -> Result<()> {
        if let Some(h) = self.pending.take() {
            let h = self.release_chunked(h);
            self.m().write_response_header(h).await?;
        }
        self.m().finish_body().await
    }
    fn is_body_empty(&mut self) -> bool {
        self.body().is_empty()
    }
    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        // The body is done, so this only waits for the client to go away (or errors if it
        // sends more), exactly as the real session does once its body is read. Pingora polls
        // it for as long as it waits on the upstream, so the watchdog's deadlines end that
        // wait here.
        let _ = no_body_expected;
        let Some(watch) = self.watch.as_deref() else {
            return self.m().read_body_or_idle(true).await;
        };
        let inner = self.inner.as_mut().expect("inner is Some until drop");
        tokio::select! {
            read = inner.read_body_or_idle(true) => read,
            kind = watch.expired(&mut self.alarm) => Err(Watchdog::error(kind)),
        }
    }
    fn body_bytes_sent(&self) -> usize {
        self.s().body_bytes_sent()
    }
    fn body_bytes_read(&self) -> usize {
        self.s().body_bytes_read()
    }
    fn digest(&self) -> Option<&Digest> {
        self.s().digest()
    }
    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.m().digest_mut()
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        self.s().client_addr()
    }
    fn server_addr(&self) -> Option<&SocketAddr> {
        self.s().server_addr()
    }
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.s().to_h1_raw()
    }
    fn enable_retry_buffering(&mut self) {}
    fn retry_buffer_truncated(&self) -> bool {
        false
    }
    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.body())
    }
    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_reader(&mut self) -> Option<BoxedBodyStream> {
        None
    }
    fn restore_custom_message_reader(&mut self, _reader: BoxedBodyStream) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }
    fn restore_custom_message_writer(&mut self, _writer: Box<dyn CustomMessageWrite>) -> Result<()> {
        Ok(())
    }
    fn is_upgrade_req(&self) -> bool {
        false
    }
    fn was_upgraded(&self) -> bool {
        false
    }
}

/// Stands in for the downstream session for the instant of a swap; never used.
struct Detached;

fn detached<T>() -> Result<T> {
    Error::e_explain(ErrorType::InternalError, "downstream session detached")
}

#[async_trait]
impl CustomSession for Detached {
    fn req_header(&self) -> &RequestHeader {
        unreachable!("the detached placeholder lives only during a swap")
    }
    fn req_header_mut(&mut self) -> &mut RequestHeader {
        unreachable!("the detached placeholder lives only during a swap")
    }
    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        detached()
    }
    async fn drain_request_body(&mut self) -> Result<()> {
        detached()
    }
    async fn write_response_header(&mut self, _: Box<ResponseHeader>, _: bool) -> Result<()> {
        detached()
    }
    async fn write_response_header_ref(&mut self, _: &ResponseHeader, _: bool) -> Result<()> {
        detached()
    }
    async fn write_body(&mut self, _: Bytes, _: bool) -> Result<()> {
        detached()
    }
    async fn write_trailers(&mut self, _: HeaderMap) -> Result<()> {
        detached()
    }
    async fn response_duplex_vec(&mut self, _: Vec<HttpTask>) -> Result<bool> {
        detached()
    }
    fn set_read_timeout(&mut self, _: Option<Duration>) {}
    fn get_read_timeout(&self) -> Option<Duration> {
        None
    }
    fn set_write_timeout(&mut self, _: Option<Duration>) {}
    fn get_write_timeout(&self) -> Option<Duration> {
        None
    }
    fn set_total_drain_timeout(&mut self, _: Option<Duration>) {}
    fn get_total_drain_timeout(&self) -> Option<Duration> {
        None
    }
    fn request_summary(&self) -> String {
        String::new()
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        None
    }
    async fn shutdown(&mut self, _: u32, _: &str) {}
    fn is_body_done(&mut self) -> bool {
        true
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn is_body_empty(&mut self) -> bool {
        true
    }
    async fn read_body_or_idle(&mut self, _: bool) -> Result<Option<Bytes>> {
        detached()
    }
    fn body_bytes_sent(&self) -> usize {
        0
    }
    fn body_bytes_read(&self) -> usize {
        0
    }
    fn digest(&self) -> Option<&Digest> {
        None
    }
    fn digest_mut(&mut self) -> Option<&mut Digest> {
        None
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        None
    }
    fn server_addr(&self) -> Option<&SocketAddr> {
        None
    }
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        Bytes::new()
    }
    fn enable_retry_buffering(&mut self) {}
    fn retry_buffer_truncated(&self) -> bool {
        false
    }
    fn get_retry_buffer(&self) -> Option<Bytes> {
        None
    }
    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_reader(&mut self) -> Option<BoxedBodyStream> {
        None
    }
    fn restore_custom_message_reader(&mut self, _: BoxedBodyStream) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }
    fn restore_custom_message_writer(&mut self, _: Box<dyn CustomMessageWrite>) -> Result<()> {
        Ok(())
    }
}
