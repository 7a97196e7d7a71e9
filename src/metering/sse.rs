//! An incremental Server-Sent Events decoder (WHATWG HTML, "Parsing an event stream").
//!
//! Network chunks split the stream anywhere: inside a field, between `\r` and `\n`, inside a
//! UTF-8 sequence. The decoder keeps only the unfinished line between calls; complete lines are
//! processed straight from the caller's chunk, found with `memchr` rather than byte by byte.
//!
//! Data is kept as bytes: the decoder never validates UTF-8 (consumers parse JSON, which does),
//! so malformed upstream output cannot make it fail or panic.

use std::fmt;
use std::mem;

use memchr::{memchr, memchr2};

/// Default bound on one line and on one event's data: far above any real chunk, low enough
/// that a misbehaving upstream cannot make the gateway buffer without limit.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `None` when absent or empty (both mean "message").
    pub event: Option<String>,
    /// The `id:` field given in this event's block, if any. Kept so a proxy can re-emit it.
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line or an event's data exceeded the decoder's limit.
    TooLarge { limit: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::TooLarge { limit } => write!(f, "SSE event larger than {limit} bytes"),
        }
    }
}

impl std::error::Error for SseError {}

/// Decodes an event stream fed in arbitrary chunks.
///
/// After an error the decoder is stopped: further input is ignored until [`SseDecoder::finish`]
/// resets it, and [`SseDecoder::error`] says why.
#[derive(Debug)]
pub struct SseDecoder {
    /// The unfinished last line of previous chunks.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    skip_lf: bool,
    /// Whether the first line has been seen (a leading BOM is stripped from it).
    started: bool,
    data: Vec<u8>,
    /// Distinguishes "no data field" (nothing to dispatch) from "empty data".
    has_data: bool,
    event: Option<String>,
    id: Option<String>,
    limit: usize,
    error: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A decoder that fails once a line or an event's data exceeds `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            skip_lf: false,
            started: false,
            data: Vec::new(),
            has_data: false,
            event: None,
            id: None,
            limit,
            error: None,
        }
    }

    pub fn error(&self) -> Option<SseError> {
        self.error
    }

    /// Decodes `chunk`, appending every event it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) {
        if self.error.is_some() {
            return;
        }
        if self.skip_lf {
            match chunk.first() {
                None => return,
                Some(b'\n') => chunk = &chunk[1..],
                Some(_) => {}
            }
            self.skip_lf = false;
        }
        while let Some(end) = memchr2(b'\n', b'\r', chunk) {
            if self.line.is_empty() {
                // A line held whole in this chunk is bounded like one buffered across chunks,
                // so whether the stream fails does not depend on where the reads split it.
                if end > self.limit {
                    self.fail();
                    return;
                }
                self.process_line(&chunk[..end], out);
            } else if self.buffer(&chunk[..end]) {
                // Take the buffer out so the line can be processed while `self` is borrowed
                // mutably, then put it back to keep its capacity.
                let mut line = mem::take(&mut self.line);
                self.process_line(&line, out);
                line.clear();
                self.line = line;
            }
            if self.error.is_some() {
                return;
            }
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    // The `\n` of a `\r\n` may arrive with the next chunk.
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            chunk = &chunk[next..];
        }
        self.buffer(chunk);
    }

    /// Ends the stream: dispatches a last event that was not followed by a blank line, then
    /// resets the decoder for a new stream.
    ///
    /// The WHATWG algorithm discards such an event; we dispatch it because some upstreams end
    /// the stream right after the last `data:` line, and dropping it could lose the usage chunk.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if self.error.is_none() {
            if !self.line.is_empty() {
                let line = mem::take(&mut self.line);
                self.process_line(&line, out);
            }
            if self.error.is_none() {
                self.dispatch(out);
            }
        }
        *self = Self::with_limit(self.limit);
    }

    /// Appends to the unfinished line; false (and the decoder stopped) past the limit.
    fn buffer(&mut self, part: &[u8]) -> bool {
        if self.line.len() + part.len() > self.limit {
            self.fail();
            return false;
        }
        self.line.extend_from_slice(part);
        true
    }

    fn fail(&mut self) {
        self.error = Some(SseError::TooLarge { limit: self.limit });
        self.line = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
    }

    fn process_line(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) {
        if !self.started {
            self.started = true;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line[0] == b':' {
            return; // comment, e.g. keep-alive ": ping"
        }
        let (field, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return self.fail();
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(text(value)),
            // The spec ignores ids containing NUL.
            b"id" if memchr(0, value).is_none() => self.id = Some(text(value)),
            // `retry` only concerns browsers reconnecting; unknown fields are ignored by spec.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take().filter(|name| !name.is_empty());
        let id = self.id.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        // Copy out (one exact-size allocation) rather than `mem::take`, so our buffer keeps its
        // capacity and the next event does not regrow it from zero.
        let data = self.data.as_slice().to_vec();
        self.data.clear();
        out.push(SseEvent { event, id, data });
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A recorded `gpt-4o-mini` stream with `stream_options.include_usage`, as sent on the wire.
    pub(crate) const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-BxQ1vZ9\",\"object\":\"chat.completion.chunk\",\"created\":1753180000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"3Kx\"}\n\n",
        "data: {\"id\":\"chatcmpl-BxQ1vZ9\",\"object\":\"chat.completion.chunk\",\"created\":1753180000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"q2\"}\n\n",
        "data: {\"id\":\"chatcmpl-BxQ1vZ9\",\"object\":\"chat.completion.chunk\",\"created\":1753180000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"! Here\\u2019s a \\\"line\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"Zf9\"}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"chatcmpl-BxQ1vZ9\",\"object\":\"chat.completion.chunk\",\"created\":1753180000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" caf\u{e9} \u{1F600}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"a\"}\n\n",
        "data: {\"id\":\"chatcmpl-BxQ1vZ9\",\"object\":\"chat.completion.chunk\",\"created\":1753180000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null,\"obfuscation\":\"Lm\"}\n\n",
        "data: {\"id\":\"chatcmpl-BxQ1vZ9\",\"object\":\"chat.completion.chunk\",\"created\":1753180000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_34a54ae93c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1205,\"completion_tokens\":9,\"total_tokens\":1214,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}},\"obfuscation\":\"x\"}\n\n",
        "data: [DONE]\n\n",
    );

    fn decode_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, Option<SseError>) {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut out);
        }
        let error = decoder.error();
        decoder.finish(&mut out);
        (out, error)
    }

    fn decode(input: &[u8]) -> Vec<SseEvent> {
        decode_chunks(&[input]).0
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent { event: None, id: None, data: data.as_bytes().to_vec() }
    }

    /// Whole, split at every position, and byte by byte must all decode alike.
    fn assert_split_invariant(input: &[u8], want: &[SseEvent]) {
        assert_eq!(decode(input), want);
        for cut in 0..=input.len() {
            let (events, _) = decode_chunks(&[&input[..cut], &input[cut..]]);
            assert_eq!(events, want, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_chunks(&bytes).0, want, "byte by byte");
        // Empty chunks between bytes must change nothing either (a `\r` then an empty chunk).
        let mut with_empty: Vec<&[u8]> = Vec::new();
        for b in input.chunks(1) {
            with_empty.push(b);
            with_empty.push(b"");
        }
        assert_eq!(decode_chunks(&with_empty).0, want, "with empty chunks");
    }

    fn openai_events() -> Vec<SseEvent> {
        OPENAI_STREAM
            .split("\n\n")
            .filter_map(|block| block.strip_prefix("data: "))
            .map(ev)
            .collect()
    }

    #[test]
    fn openai_stream_any_split() {
        let want = openai_events();
        assert_eq!(want.len(), 7);
        assert_eq!(want.last().unwrap().data, b"[DONE]");
        assert_split_invariant(OPENAI_STREAM.as_bytes(), &want);
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        let want = openai_events();
        let crlf = OPENAI_STREAM.replace('\n', "\r\n");
        assert_split_invariant(crlf.as_bytes(), &want);
        let cr = OPENAI_STREAM.replace('\n', "\r");
        assert_split_invariant(cr.as_bytes(), &want);
        // Mixed endings in one stream.
        let mixed = b"data: a\r\n\rdata: b\n\r\ndata: c\r\r";
        assert_split_invariant(mixed, &[ev("a"), ev("b"), ev("c")]);
    }

    #[test]
    fn fields_comments_and_multiline_data() {
        let input = b": comment\nevent: delta\nid: 7\ndata: first\ndata:second\ndata:  third\n\n\
            retry: 100\nunknown: x\ndata\n\nevent:\ndata: plain\n\nevent: ping\n\nid: a\0b\ndata: x\n\n";
        let want = [
            SseEvent {
                event: Some("delta".into()),
                id: Some("7".into()),
                data: b"first\nsecond\n third".to_vec(),
            },
            ev(""), // a bare `data` line is an empty data field: dispatched with empty data
            ev("plain"),
            // `event: ping` with no data is not dispatched; an id with NUL is ignored.
            ev("x"),
        ];
        assert_split_invariant(input, &want);
    }

    #[test]
    fn trailing_event_without_blank_line_and_bom() {
        assert_split_invariant(b"data: a\n\ndata: b", &[ev("a"), ev("b")]);
        assert_split_invariant(b"data: a\n\ndata: b\n", &[ev("a"), ev("b")]);
        assert_split_invariant(b"\xEF\xBB\xBFdata: a\n\n", &[ev("a")]);
        // Only a leading BOM is special.
        assert_eq!(decode(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"), [ev("a")]);
    }

    #[test]
    fn invalid_utf8_is_kept_as_bytes() {
        let events = decode(b"event: \xFF\ndata: \xC3\x28\xFF\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, b"\xC3\x28\xFF");
        assert_eq!(events[0].event.as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn oversized_lines_and_events_stop_the_decoder() {
        let limit = 16;
        let mut decoder = SseDecoder::with_limit(limit);
        let mut out = Vec::new();
        decoder.feed(b"data: ok\n\ndata: 0123456789", &mut out);
        assert_eq!(decoder.error(), None);
        decoder.feed(b"abcdef", &mut out);
        assert_eq!(decoder.error(), Some(SseError::TooLarge { limit }));
        decoder.feed(b"\n\ndata: later\n\n", &mut out);
        assert_eq!(out, [ev("ok")]);

        // Many short data lines in one event are bounded too.
        let mut decoder = SseDecoder::with_limit(limit);
        let mut out = Vec::new();
        decoder.feed(b"data: 12345\ndata: 12345\ndata: 12345\n\n", &mut out);
        assert!(decoder.error().is_some());
        assert!(out.is_empty());
        // A long line inside one chunk is caught as well.
        let mut decoder = SseDecoder::with_limit(limit);
        decoder.feed(b"data: 0123456789abcdefghij\n\n", &mut out);
        assert!(decoder.error().is_some());
        // finish() resets for a new stream.
        decoder.finish(&mut out);
        decoder.feed(b"data: ok\n\n", &mut out);
        assert_eq!(out, [ev("ok")]);
    }

    /// Found by the `sse_decoder` fuzz target: a long line that is not data (a comment, an
    /// unknown field) failed the decoder when it arrived in two reads but not in one, so the
    /// same stream was metered or not depending on the network.
    #[test]
    fn the_limit_on_a_line_does_not_depend_on_the_reads() {
        let limit = 16;
        for line in [&b": a comment longer than the limit"[..], b"dat5:zzzzzzzzzzzzzzzzzzzz", b"event: 0123456789abcdef"] {
            let input = [line, b"\ndata: x\n\n"].concat();
            let decode_with = |chunks: &[&[u8]]| {
                let mut decoder = SseDecoder::with_limit(limit);
                let mut out = Vec::new();
                for chunk in chunks {
                    decoder.feed(chunk, &mut out);
                }
                (out, decoder.error())
            };
            let whole = decode_with(&[&input]);
            assert_eq!(whole, (vec![], Some(SseError::TooLarge { limit })), "{:?}", String::from_utf8_lossy(line));
            for cut in 0..=input.len() {
                assert_eq!(decode_with(&[&input[..cut], &input[cut..]]), whole, "split at {cut}");
            }
        }
        // A line of exactly the limit is fine either way.
        let input = b"event: 123456789\ndata: x\n\n";
        let mut decoder = SseDecoder::with_limit(limit);
        let mut out = Vec::new();
        decoder.feed(input, &mut out);
        assert_eq!((decoder.error(), out.len()), (None, 1));
    }
}
