//! Helpers shared by the fuzz targets: turning the fuzzer's bytes into a stream plus the points
//! where the network split it, and checking that what a translator wrote is well-formed SSE.

/// An input read as a stream and the reads it arrived in.
///
/// Layout: one byte of flags for the target, one byte `k`, then `k % 8` two-byte cut
/// positions, then the stream itself. The cuts (taken modulo the stream's length + 1, so any
/// value is a valid position, and repeated values give empty reads) let the fuzzer steer splits
/// into the middle of a field, a `\r\n` or a UTF-8 sequence.
pub struct Split<'a> {
    pub flags: u8,
    pub stream: &'a [u8],
    cuts: Vec<usize>,
}

impl<'a> Split<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let (flags, rest) = match data.split_first() {
            Some((&f, rest)) => (f, rest),
            None => (0, data),
        };
        let (k, rest) = match rest.split_first() {
            Some((&k, rest)) => ((k % 8) as usize, rest),
            None => (0, rest),
        };
        let header = (2 * k).min(rest.len());
        let (raw, stream) = rest.split_at(header);
        let mut cuts: Vec<usize> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (stream.len() + 1))
            .collect();
        cuts.sort_unstable();
        Split { flags, stream, cuts }
    }

    /// The stream as the reads the cuts give (possibly empty ones).
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::with_capacity(self.cuts.len() + 1);
        let mut at = 0;
        for &cut in &self.cuts {
            out.push(&self.stream[at..cut]);
            at = cut;
        }
        out.push(&self.stream[at..]);
        out
    }

    /// The stream one byte per read: the worst split of all.
    pub fn bytes(&self) -> Vec<&'a [u8]> {
        self.stream.chunks(1).collect()
    }
}

/// Whether `bytes` parse as one JSON document (any value).
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Asserts that a translator's output is what an OpenAI client can read: `data: …\n\n` events
/// only, each on one line, each a JSON object or `[DONE]`, and `[DONE]` (if any) last.
/// Returns the events' data.
pub fn assert_openai_sse(out: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let end = find(rest, b"\n\n").unwrap_or_else(|| panic!("unterminated event: {:?}", lossy(rest)));
        let event = &rest[..end];
        let data = event
            .strip_prefix(b"data: ")
            .unwrap_or_else(|| panic!("not a data event: {:?}", lossy(event)));
        assert!(!data.contains(&b'\n') && !data.contains(&b'\r'), "multi-line data: {:?}", lossy(data));
        if data != b"[DONE]" {
            let v: serde_json::Value = serde_json::from_slice(data)
                .unwrap_or_else(|e| panic!("event is not JSON ({e}): {:?}", lossy(data)));
            assert!(v.is_object(), "event is not an object: {:?}", lossy(data));
        }
        events.push(data);
        rest = &rest[end + 2..];
    }
    if let Some(done) = events.iter().position(|d| *d == b"[DONE]") {
        assert_eq!(done, events.len() - 1, "[DONE] is not the last event: {:?}", lossy(out));
    }
    events
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// What a stream meter made of one sequence of reads.
pub struct Metered {
    pub out: Vec<u8>,
    pub usage: Option<tollgate::metering::Usage>,
    pub id: Option<String>,
    pub estimate: u64,
}

/// Feeds `chunks` to `inner` (behind the legacy-completions re-framer when `legacy`), ends the
/// stream, and collects what the client got and what was metered.
pub fn meter(inner: Box<dyn tollgate::metering::StreamMeter>, legacy: bool, chunks: &[&[u8]]) -> Metered {
    let mut stream = if legacy { Box::new(tollgate::providers::completions::ChatToCompletionStream::new(inner)) } else { inner };
    let mut out = bytes::BytesMut::new();
    for chunk in chunks {
        stream.on_bytes(chunk, &mut out);
    }
    stream.on_end(&mut out);
    Metered {
        out: out.to_vec(),
        usage: stream.usage(),
        id: stream.response_id().map(str::to_owned),
        estimate: stream.estimated_completion_tokens(),
    }
}

/// Asserts that the same stream, read as `other`, gave the client and the meter exactly what it
/// did read as `whole`.
pub fn assert_same_metering(whole: &Metered, other: &Metered) {
    assert!(other.out == whole.out, "output depends on the reads:\n{}\n---\n{}", lossy(&whole.out), lossy(&other.out));
    assert_eq!((other.usage, &other.id, other.estimate), (whole.usage, &whole.id, whole.estimate));
}

/// Asserts that a translated stream ends as a client expects: on `[DONE]` with no error event
/// before it, or on exactly one error event. `events` are `out`'s (see [`assert_openai_sse`]).
pub fn assert_ends_once(events: &[&[u8]], out: &[u8]) {
    let last = events.last().expect("a stream always ends with [DONE] or an error event");
    let errors = events.iter().filter(|e| e.starts_with(b"{\"error\"")).count();
    if *last == b"[DONE]" {
        assert_eq!(errors, 0, "{}", lossy(out));
    } else {
        assert!(last.starts_with(b"{\"error\""), "the stream ended on neither [DONE] nor an error: {}", lossy(out));
        assert_eq!(errors, 1, "{}", lossy(out));
    }
}
