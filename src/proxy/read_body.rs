//! Reading a request body whole, within the configured limit.

use crate::api::error::ApiError;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

/// Read the whole request body, answering `100 Continue` first if the client waits for it.
///
/// A declared `Content-Length` over `limit` is refused before a byte is read; a chunked body
/// is counted as it arrives and refused as soon as it passes `limit`, so a client cannot make
/// the gateway buffer more than `limit` (+ one read) bytes.
pub async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > limit) {
        // A client waiting for 100-continue sends nothing more: answer at once.
        if !expects_continue {
            discard_rest(session).await;
        }
        return Err(ApiError::too_large(limit));
    }
    if expects_continue {
        // Pingora never answers Expect itself; curl would otherwise wait ~1 s.
        session
            .downstream_session
            .write_continue_response()
            .await
            .map_err(|e| ApiError::invalid_request(format!("cannot answer 100-continue: {e}")))?;
    }

    // A small body nearly always comes as one chunk (Pingora's own copy of it): kept as it
    // is, and only a second chunk starts a buffer.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        match session.downstream_session.read_request_body().await {
            Ok(Some(chunk)) => {
                let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
                if held as u64 + chunk.len() as u64 > limit {
                    drop((first, buf));
                    discard_rest(session).await;
                    return Err(ApiError::too_large(limit));
                }
                if first.is_none() && buf.is_empty() {
                    first = Some(chunk);
                    continue;
                }
                if let Some(earlier) = first.take() {
                    buf.reserve(declared.unwrap_or(0).min(limit) as usize);
                    buf.extend_from_slice(&earlier);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::invalid_request(format!("cannot read request body: {e}")))
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Read and drop what is left of a refused body, for a bounded time.
///
/// A client that sends its whole body before reading (most do, without `Expect`) would
/// otherwise have the connection reset under it by the unread bytes and never see the 413.
/// Nothing is kept, and a client that keeps sending past the bound is cut off.
async fn discard_rest(session: &mut Session) {
    const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(DRAIN_FOR, session.downstream_session.drain_request_body()).await;
}
