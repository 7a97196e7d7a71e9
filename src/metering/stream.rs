//! Metering a streamed OpenAI chat completion as it passes through the gateway.
//!
//! The meter re-frames the upstream SSE event by event: each complete event is written to the
//! client as soon as its blank line arrives, so it adds no latency beyond the decoder's need to
//! see a whole event. Along the way it renames the model to the gateway's slug, records the
//! usage the provider reports, and counts generated characters in case the stream is cut
//! before that usage arrives.

use bytes::BytesMut;
use memchr::memchr;

use super::estimate;
use super::sse::{SseDecoder, SseError, SseEvent};
use super::usage::Usage;
use crate::providers::json_scan;
use crate::providers::openai;

pub struct OpenAiStreamMeter {
    decoder: SseDecoder,
    /// Decoded events waiting to be written; kept to reuse its allocation across calls.
    events: Vec<SseEvent>,
    /// The slug as a JSON string literal, escaped once here rather than per chunk.
    slug_json: Vec<u8>,
    /// The id every chunk carries to the client, as a JSON string literal (None: the
    /// provider's own).
    id_json: Option<Vec<u8>>,
    /// Scratch space for a rewritten chunk, reused across events.
    scratch: Vec<u8>,
    strip_usage_chunk: bool,
    usage: Option<Usage>,
    /// The completion's `id` (`chatcmpl-...`), from the first chunk that has one.
    response_id: Option<String>,
    generated_chars: u64,
    saw_done: bool,
    saw_error: bool,
    /// The decoder gave up (oversized event): from then on bytes pass through untouched.
    passthrough: bool,
}

impl OpenAiStreamMeter {
    /// `strip_usage_chunk`: the gateway added `include_usage` itself, so the client did not ask
    /// for the usage-only chunk and must not receive it.
    pub fn new(slug: &str, strip_usage_chunk: bool) -> Self {
        let mut slug_json = Vec::with_capacity(slug.len() + 2);
        json_scan::write_json_string(&mut slug_json, slug);
        OpenAiStreamMeter {
            decoder: SseDecoder::new(),
            events: Vec::new(),
            slug_json,
            id_json: None,
            scratch: Vec::new(),
            strip_usage_chunk,
            usage: None,
            response_id: None,
            generated_chars: 0,
            saw_done: false,
            saw_error: false,
            passthrough: false,
        }
    }

    /// Every chunk goes to the client with `id` as its `id` (the gateway's; see
    /// `store::client_response_id`). [`response_id`](Self::response_id) stays the provider's.
    pub fn with_client_id(mut self, id: &str) -> Self {
        let mut json = Vec::with_capacity(id.len() + 2);
        json_scan::write_json_string(&mut json, id);
        self.id_json = Some(json);
        self
    }

    /// Feeds upstream bytes; appends to `out` every event they complete, rewritten.
    pub fn on_bytes(&mut self, input: &[u8], out: &mut BytesMut) {
        if self.passthrough {
            out.extend_from_slice(input);
            return;
        }
        self.decoder.feed(input, &mut self.events);
        self.write_events(out);
        if self.decoder.error().is_some() {
            // Metering is lost for this stream (it falls back to the estimate); forwarding the
            // rest unchanged is better than silently truncating the client's response.
            self.passthrough = true;
        }
    }

    /// The upstream body ended: flushes a last event that lacked its blank line.
    pub fn on_end(&mut self, out: &mut BytesMut) {
        if self.passthrough {
            return;
        }
        self.decoder.finish(&mut self.events);
        self.write_events(out);
    }

    /// The last usage the provider reported, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The provider's id for this completion, once a chunk carrying it has passed.
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// The provider sent an `{"error": ...}` event mid-stream.
    pub fn saw_error(&self) -> bool {
        self.saw_error
    }

    /// Why the stream could not be decoded (it is then forwarded unmetered).
    pub fn decode_error(&self) -> Option<SseError> {
        self.decoder.error()
    }

    /// Characters of generated text seen so far.
    pub fn generated_chars(&self) -> u64 {
        self.generated_chars
    }

    /// Completion tokens estimated from the generated text, for a stream without usage.
    pub fn estimated_completion_tokens(&self) -> u64 {
        estimate::tokens_from_chars(self.generated_chars)
    }

    fn write_events(&mut self, out: &mut BytesMut) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            self.write_event(&event, out);
        }
        self.events = events;
    }

    fn write_event(&mut self, event: &SseEvent, out: &mut BytesMut) {
        let data = event.data.as_slice();
        if data.trim_ascii() == b"[DONE]" {
            self.saw_done = true;
            return write_sse(out, event, data);
        }
        let Some(info) =
            openai::rewrite_stream_chunk_as(data, &self.slug_json, self.id_json.as_deref(), &mut self.scratch)
        else {
            // Not a JSON object: not ours to interpret.
            return write_sse(out, event, data);
        };
        if info.is_error {
            self.saw_error = true;
            return write_sse(out, event, data);
        }
        if info.usage.is_some() {
            self.usage = info.usage;
        }
        if self.response_id.is_none() {
            // Only until found: in practice the first chunk, so one extra scan per stream.
            self.response_id = openai::response_id(data);
        }
        self.generated_chars = self.generated_chars.saturating_add(info.generated_chars);
        if self.strip_usage_chunk && info.usage.is_some() && info.choices == Some(0) {
            return;
        }
        write_sse(out, event, &self.scratch);
    }
}

/// Frames one event: `event:`/`id:` lines if it had them, then one `data:` line per line of
/// data (a decoded multi-line data field must go back out as several lines).
fn write_sse(out: &mut BytesMut, event: &SseEvent, mut data: &[u8]) {
    out.reserve(data.len() + 16);
    if let Some(name) = &event.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    if let Some(id) = &event.id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\n");
    }
    loop {
        let end = memchr(b'\n', data).unwrap_or(data.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&data[..end]);
        out.extend_from_slice(b"\n");
        if end == data.len() {
            break;
        }
        data = &data[end + 1..];
    }
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::sse::tests::OPENAI_STREAM;

    const SLUG: &str = "openai/gpt-4o-mini";

    fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, OpenAiStreamMeter) {
        let mut meter = OpenAiStreamMeter::new(SLUG, strip);
        let mut out = BytesMut::new();
        for chunk in chunks {
            meter.on_bytes(chunk, &mut out);
        }
        meter.on_end(&mut out);
        (out.to_vec(), meter)
    }

    /// The fixture as the client must see it: model renamed, comment dropped, usage chunk kept
    /// or dropped.
    fn expected(strip: bool) -> Vec<u8> {
        let mut want = String::new();
        for block in OPENAI_STREAM.split_inclusive("\n\n") {
            if block.starts_with(':') {
                continue;
            }
            if strip && block.contains(r#""choices":[]"#) {
                continue;
            }
            want.push_str(
                &block.replace(
                    r#""model":"gpt-4o-mini-2024-07-18""#,
                    r#""model":"openai/gpt-4o-mini""#,
                ),
            );
        }
        want.into_bytes()
    }

    const USAGE: Usage =
        Usage { prompt_tokens: 1205, completion_tokens: 9, cached_prompt_tokens: 1024, cache_write_tokens: 0 };

    #[test]
    fn recorded_stream_any_split() {
        let input = OPENAI_STREAM.as_bytes();
        for strip in [false, true] {
            let want = expected(strip);
            assert!(!String::from_utf8_lossy(&want).contains("gpt-4o-mini-2024"));
            for cut in 0..=input.len() {
                let (out, meter) = run(&[&input[..cut], &input[cut..]], strip);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&want),
                    "strip={strip} cut={cut}"
                );
                assert_eq!(meter.usage(), Some(USAGE));
                assert_eq!(meter.response_id(), Some("chatcmpl-BxQ1vZ9"));
                assert!(meter.saw_done() && !meter.saw_error());
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&bytes, strip).0, want, "byte by byte");
        }
    }

    #[test]
    fn every_chunk_carries_the_client_id() {
        let input = OPENAI_STREAM.as_bytes();
        let want = String::from_utf8(expected(false)).unwrap().replace(r#""id":"chatcmpl-BxQ1vZ9""#, r#""id":"chatcmpl-gen-7""#);
        assert!(!want.contains("BxQ1vZ9"));
        let mut meter = OpenAiStreamMeter::new(SLUG, false).with_client_id("chatcmpl-gen-7");
        let mut out = BytesMut::new();
        for byte in input.chunks(1) {
            meter.on_bytes(byte, &mut out);
        }
        meter.on_end(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), want);
        // The provider's id is still the one recorded.
        assert_eq!((meter.response_id(), meter.usage()), (Some("chatcmpl-BxQ1vZ9"), Some(USAGE)));
    }

    #[test]
    fn counts_generated_characters() {
        let (_, meter) = run(&[OPENAI_STREAM.as_bytes()], false);
        // "" + "Hello" + "! Here’s a \"line\"\n" + " café 😀"
        assert_eq!(meter.generated_chars(), 5 + 18 + 7);
        assert_eq!(meter.estimated_completion_tokens(), 8);
    }

    #[test]
    fn complete_events_are_never_held_back() {
        let mut meter = OpenAiStreamMeter::new(SLUG, true);
        let mut out = BytesMut::new();
        meter.on_bytes(b"data: {\"model\":\"up\",\"choices\":[]}\n", &mut out);
        assert!(out.is_empty(), "the event is not complete before its blank line");
        meter.on_bytes(b"\n", &mut out);
        assert_eq!(&out[..], b"data: {\"model\":\"openai/gpt-4o-mini\",\"choices\":[]}\n\n");
    }

    #[test]
    fn stream_cut_before_usage_is_estimated() {
        let input = OPENAI_STREAM.as_bytes();
        let usage_at = OPENAI_STREAM.find(r#""choices":[]"#).unwrap();
        let (out, meter) = run(&[&input[..usage_at]], true);
        assert_eq!(meter.usage(), None);
        assert!(!meter.saw_done());
        assert_eq!(meter.estimated_completion_tokens(), 8);
        // The cut event is flushed at end of stream as what it is: not JSON, so unchanged.
        // The cut event is flushed at end of stream; it is not JSON, so it goes out unchanged.
        assert!(out.ends_with(b"\"system_fingerprint\":\"fp_34a54ae93c\",\n\n"));
    }

    #[test]
    fn tool_calls_reasoning_errors_and_other_events() {
        let input = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"reasoning_content\":\"think\",\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\":1}\"}}]}},{\"delta\":{\"reasoning\":\"ab\",\"content\":null}}]}\n\n",
            "event: notice\nid: 3\ndata: not json\ndata: second line\n\n",
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"},\"model\":\"m\"}\n\n",
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"xyz\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        );
        let (out, meter) = run(&[input.as_bytes()], true);
        let want = concat!(
            "data: {\"model\":\"openai/gpt-4o-mini\",\"choices\":[{\"delta\":{\"reasoning_content\":\"think\",\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\":1}\"}}]}},{\"delta\":{\"reasoning\":\"ab\",\"content\":null}}]}\n\n",
            "event: notice\nid: 3\ndata: not json\ndata: second line\n\n",
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"},\"model\":\"m\"}\n\n",
            // Usage in a chunk that also has choices: recorded, and forwarded (it carries text).
            "data: {\"model\":\"openai/gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"xyz\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        );
        assert_eq!(String::from_utf8_lossy(&out), want);
        assert!(meter.saw_error());
        assert_eq!(meter.generated_chars(), 5 + 3 + 7 + 2 + 3);
        assert_eq!(
            meter.usage(),
            Some(Usage { prompt_tokens: 3, completion_tokens: 4, cached_prompt_tokens: 0, ..Default::default() })
        );
    }

    #[test]
    fn oversized_event_switches_to_passthrough() {
        let mut meter = OpenAiStreamMeter::new(SLUG, false);
        meter.decoder = SseDecoder::with_limit(32);
        let mut out = BytesMut::new();
        meter.on_bytes(b"data: {\"model\":\"m\"}\n\ndata: ", &mut out);
        meter.on_bytes(&[b'x'; 40], &mut out);
        meter.on_bytes(b"\n\ndata: [DONE]\n\n", &mut out);
        meter.on_end(&mut out);
        assert!(meter.decode_error().is_some());
        assert_eq!(&out[..], b"data: {\"model\":\"openai/gpt-4o-mini\"}\n\n\n\ndata: [DONE]\n\n");
    }

    /// Random mutations of the recorded stream (line breaks, braces, quotes moved around): no
    /// panic, and the output still does not depend on where the input was split.
    #[test]
    fn mutated_streams_are_split_invariant() {
        let alphabet = b"\r\n:{}[]\",\\ d\xff";
        let mut next = crate::testing::xorshift(0x9E37_79B9_7F4A_7C15_u64);
        for _ in 0..300 {
            let mut input = OPENAI_STREAM.as_bytes().to_vec();
            for _ in 0..=next(8) {
                let at = next(input.len());
                input[at] = alphabet[next(alphabet.len())];
            }
            let strip = next(2) == 0;
            let (whole, _) = run(&[&input], strip);
            for _ in 0..8 {
                let (a, b) = (next(input.len()), next(input.len()));
                let (a, b) = (a.min(b), a.max(b));
                let (out, _) = run(&[&input[..a], &input[a..b], &input[b..]], strip);
                assert_eq!(out, whole, "splits {a} {b}");
            }
        }
    }
}
