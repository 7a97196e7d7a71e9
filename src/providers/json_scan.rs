//! A scanner for the members of one JSON object that reports byte spans instead of values.
//!
//! The gateway has to change one or two top-level members (`model`, `stream_options`) of bodies
//! that can be megabytes long (vision requests carry base64 images). Parsing into a
//! `serde_json::Value` and serialising again would allocate the whole tree and could reorder or
//! reformat bytes the client chose; instead we find where each member's key and value start and
//! end, and the caller copies everything else verbatim.
//!
//! The scanner only tracks what decides where a value ends: string quotes and escapes, and
//! bracket depth. It is deliberately lenient inside values (it does not check number syntax,
//! UTF-8, or that `[` is closed by `]` rather than `}`): request bodies are fully validated by
//! serde before they are rewritten, and for upstream responses a best-effort rewrite is the
//! right behaviour. The object's own structure (`{`, keys, `:`, `,`, `}`, trailing bytes) is
//! checked, so a span it reports is always a real member of that object.
//!
//! Nothing here allocates, recurses, or panics: nesting is followed with a counter, and strings
//! (where big payloads live) are skipped with `memchr`, short ones and the structure between
//! them 16 bytes at a time (`block`).

use std::fmt;
use std::ops::Range;

use memchr::memchr2;

/// Why an object could not be scanned: what was expected, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub expected: &'static str,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {} at byte {}", self.expected, self.offset)
    }
}

impl std::error::Error for ScanError {}

/// One member of an object: the key's span (quotes included) and the value's span (exact, no
/// surrounding whitespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
    /// Whether the key contains a backslash escape, as the scan that found its end saw:
    /// comparing a key without one is a plain byte comparison.
    key_escaped: bool,
}

impl Member {
    /// Whether the key, decoded, equals `name`. Keys are compared decoded because serde (which
    /// validates requests) treats `"mod\u0065l"` as `model`; the rewrite must agree with it.
    #[inline]
    pub fn key_is(&self, src: &[u8], name: &str) -> bool {
        if !self.key_escaped {
            // No escape: the key decodes to the bytes between its quotes.
            return self.key.len() == name.len() + 2
                && src.get(self.key.start + 1..self.key.end - 1) == Some(name.as_bytes());
        }
        self.escaped_key_is(src, name)
    }

    #[inline(never)]
    fn escaped_key_is(&self, src: &[u8], name: &str) -> bool {
        let Some(quoted) = src.get(self.key.clone()) else {
            return false;
        };
        // An escaped key decodes to fewer bytes than it has, so one no longer than `name` cannot
        // be `name`.
        if quoted.len() <= name.len() + 2 {
            return false;
        }
        // Rare: an escaped key. Decoding allocates, but only for keys that contain escapes.
        serde_json::from_slice::<String>(quoted).is_ok_and(|key| key == name)
    }

    /// The value's bytes.
    pub fn value<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        src.get(self.value.clone()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after `{`: the next token is a key or `}`.
    First,
    /// Just after a value: the next token is `,` or `}`.
    Rest,
    /// The closing brace was found at this index.
    Done(usize),
}

/// Walks the members of one JSON object, in order.
///
/// ```
/// use tollgate::providers::json_scan::ObjectScanner;
/// let body = br#"{"model": "a", "n": [1, {"model": 2}]}"#;
/// let mut scan = ObjectScanner::new(body).unwrap();
/// let first = scan.next_member().unwrap().unwrap();
/// assert!(first.key_is(body, "model"));
/// assert_eq!(first.value(body), br#""a""#);
/// ```
pub struct ObjectScanner<'a> {
    src: &'a [u8],
    pos: usize,
    state: State,
    /// A top-level object must be followed by nothing but whitespace.
    top_level: bool,
    members: usize,
}

impl<'a> ObjectScanner<'a> {
    /// Scans a whole document that must be one object (surrounding whitespace allowed).
    pub fn new(src: &'a [u8]) -> Result<Self, ScanError> {
        let open = skip_ws(src, 0);
        let mut scanner = Self::at(src, open)?;
        scanner.top_level = true;
        Ok(scanner)
    }

    /// Scans the object whose `{` is at `open`, e.g. a member's value span start.
    pub fn at(src: &'a [u8], open: usize) -> Result<Self, ScanError> {
        if src.get(open) != Some(&b'{') {
            return Err(ScanError { offset: open, expected: "'{'" });
        }
        Ok(ObjectScanner { src, pos: open + 1, state: State::First, top_level: false, members: 0 })
    }

    /// The next member, `Ok(None)` after the closing brace.
    pub fn next_member(&mut self) -> Result<Option<Member>, ScanError> {
        self.next_member_with(|_, _| None)
    }

    /// [`next_member`](Self::next_member), letting `read` take the value first: given the
    /// member (its value span still empty) and where the value starts, it returns where the
    /// value ends if it read it whole, or `None` to have it skipped as usual; so that a caller
    /// that parses the value anyway scans it only once. The end `read` gives must be the one
    /// skipping would find (checked in debug builds).
    pub(crate) fn next_member_with(
        &mut self,
        read: impl FnOnce(&Member, usize) -> Option<usize>,
    ) -> Result<Option<Member>, ScanError> {
        let src = self.src;
        let mut p = skip_ws(src, self.pos);
        match self.state {
            State::Done(_) => return Ok(None),
            State::First => {
                if src.get(p) == Some(&b'}') {
                    return self.close(p);
                }
            }
            State::Rest => match src.get(p) {
                Some(b',') => p = skip_ws(src, p + 1),
                Some(b'}') => return self.close(p),
                _ => return Err(ScanError { offset: p, expected: "',' or '}'" }),
            },
        }
        if src.get(p) != Some(&b'"') {
            return Err(ScanError { offset: p, expected: "a string key" });
        }
        let (key_end, key_escaped) = scan_string(src, p)?;
        let colon = skip_ws(src, key_end);
        if src.get(colon) != Some(&b':') {
            return Err(ScanError { offset: colon, expected: "':'" });
        }
        let value_start = skip_ws(src, colon + 1);
        let key_only = Member { key: p..key_end, value: value_start..value_start, key_escaped };
        let value_end = match read(&key_only, value_start) {
            Some(end) if end > value_start && end <= src.len() => {
                debug_assert_eq!(skip_value(src, value_start).ok(), Some(end), "a value read in place ends where skipping ends");
                end
            }
            _ => skip_value(src, value_start)?,
        };
        self.pos = value_end;
        self.state = State::Rest;
        self.members += 1;
        Ok(Some(Member { key: p..key_end, value: value_start..value_end, key_escaped }))
    }

    /// Index of the closing `}`, once `next_member` has returned `Ok(None)`. Members are
    /// inserted just before it.
    pub fn close_brace(&self) -> Option<usize> {
        match self.state {
            State::Done(at) => Some(at),
            _ => None,
        }
    }

    /// How many members have been returned so far (an inserted member needs a comma if any).
    pub fn member_count(&self) -> usize {
        self.members
    }

    fn close(&mut self, brace: usize) -> Result<Option<Member>, ScanError> {
        if self.top_level {
            let end = skip_ws(self.src, brace + 1);
            if end != self.src.len() {
                return Err(ScanError { offset: end, expected: "end of input" });
            }
        }
        self.state = State::Done(brace);
        Ok(None)
    }
}

/// Scans a whole object and returns its first member named `name` (decoded comparison).
pub fn find_member(src: &[u8], name: &str) -> Result<Option<Member>, ScanError> {
    let mut scanner = ObjectScanner::new(src)?;
    let mut found = None;
    // Keep going after a hit: the rest of the object must be well-formed too.
    while let Some(member) = scanner.next_member()? {
        if found.is_none() && member.key_is(src, name) {
            found = Some(member);
        }
    }
    Ok(found)
}

/// Appends `n` as a JSON number (plain decimal digits), without a `String` per number.
pub fn write_json_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `s` as a JSON string literal (quotes included). Infallible, unlike
/// `serde_json::to_writer`, so callers need no error path for a value they produced.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every string written (ids, slugs, names, paths) needs no escape: checked in one
    // pass with no branch per byte, and copied whole.
    let plain = !block::any_escapable(bytes);
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn skip_ws(src: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = src.get(i) {
        i += 1;
    }
    i
}

/// `src[start]` is `"`; returns the index just past the closing quote.
#[inline(always)]
fn skip_string(src: &[u8], start: usize) -> Result<usize, ScanError> {
    scan_string(src, start).map(|(end, _)| end)
}

/// [`skip_string`], and whether the string contains a backslash escape.
#[inline(always)]
fn scan_string(src: &[u8], start: usize) -> Result<(usize, bool), ScanError> {
    // Most strings (keys, ids, roles, short values) end within a few 16-byte blocks and have
    // no escape: looked for a block at a time, inline, with nothing to set up. The rest (an
    // escape, a long prompt or image) take the out-of-line search.
    let mut i = start + 1;
    for _ in 0..4 {
        match block::mask(src, i, [b'"', b'\\']) {
            Some(0) => i += block::LEN,
            Some(mask) => {
                let k = i + mask.trailing_zeros() as usize;
                if src[k] == b'"' {
                    return Ok((k + 1, false));
                }
                return scan_string_from(src, k);
            }
            None => break,
        }
    }
    scan_string_from(src, i)
}

/// The end of a string from `i`, somewhere inside it, on (and whether it has an escape from
/// there): memchr2's wide search, its setup cost paid once per call.
#[inline(never)]
fn scan_string_from(src: &[u8], mut i: usize) -> Result<(usize, bool), ScanError> {
    let mut escaped = false;
    while i <= src.len() {
        match memchr2(b'"', b'\\', &src[i..]) {
            Some(k) if src[i + k] == b'"' => return Ok((i + k + 1, escaped)),
            // A backslash escapes exactly the next byte as far as finding the end is concerned
            // (`\uXXXX` has no quote or backslash in its hex digits).
            Some(k) => {
                escaped = true;
                i += k + 2;
            }
            None => break,
        }
    }
    Err(ScanError { offset: src.len(), expected: "closing '\"'" })
}

/// Returns the index just past the value starting at `start`.
fn skip_value(src: &[u8], start: usize) -> Result<usize, ScanError> {
    match src.get(start) {
        Some(b'"') => skip_string(src, start),
        Some(b'{' | b'[') => skip_nested(src, start),
        Some(_) => {
            // Literals and numbers: a run of the bytes they can be made of.
            let len = src[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                .count();
            if len == 0 {
                return Err(ScanError { offset: start, expected: "a value" });
            }
            Ok(start + len)
        }
        None => Err(ScanError { offset: start, expected: "a value" }),
    }
}

/// `src[start]` opens an object or array; returns the index just past its closing bracket.
fn skip_nested(src: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        // To the next byte that matters here: a quote or a bracket (16 bytes at a time, the
        // numbers, commas, colons and whitespace in between skipped unseen).
        match block::mask(src, i, [b'"', b'{', b'}', b'[', b']']) {
            Some(0) => {
                i += block::LEN;
                continue;
            }
            Some(mask) => i += mask.trailing_zeros() as usize,
            None => break,
        }
        match src[i] {
            b'"' => {
                i = skip_string(src, i)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            _ => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
        }
        i += 1;
    }
    Err(ScanError { offset: src.len(), expected: "closing bracket" })
}

/// Finding the first of a few bytes in a 16-byte block: one compare per byte looked for and
/// a bit mask, where a loop would test each byte against each (scanning a response's
/// `choices` byte by byte was most of the response rewrite's cost).
mod block {
    pub const LEN: usize = 16;

    /// Bit `k` set where `src[at + k]` is one of `bytes`, for the 16 bytes from `at` (or
    /// those left, when fewer remain); `None` when `at` is past the end. `bytes` never holds
    /// a zero byte, the padding of a short last block.
    #[inline(always)]
    pub fn mask<const N: usize>(src: &[u8], at: usize, bytes: [u8; N]) -> Option<u32> {
        match src.get(at..at.checked_add(LEN)?) {
            Some(chunk) => Some(imp::mask(chunk.try_into().ok()?, bytes)),
            None => {
                let rest = src.get(at..).filter(|rest| !rest.is_empty())?;
                let mut padded = [0u8; LEN];
                padded[..rest.len()].copy_from_slice(rest);
                Some(imp::mask(&padded, bytes))
            }
        }
    }

    /// Whether `bytes` holds a byte a JSON string must escape: a control character, `"` or
    /// `\`.
    #[inline]
    pub fn any_escapable(bytes: &[u8]) -> bool {
        let mut chunks = bytes.chunks_exact(LEN);
        if chunks.by_ref().any(|chunk| chunk.try_into().map_or(true, imp::escapable)) {
            return true;
        }
        // The last bytes (most strings written are shorter than a block) padded with a byte
        // that needs no escape.
        let rest = chunks.remainder();
        let mut padded = [b'a'; LEN];
        padded[..rest.len()].copy_from_slice(rest);
        imp::escapable(&padded)
    }

    #[cfg(target_arch = "x86_64")]
    mod imp {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
            _mm_setzero_si128,
        };

        #[inline(always)]
        pub fn mask<const N: usize>(chunk: &[u8; super::LEN], bytes: [u8; N]) -> u32 {
            // SAFETY: SSE2 is part of the x86_64 baseline; the load reads exactly the 16
            // bytes of `chunk`, unaligned loads being allowed.
            unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                let mut hits = _mm_setzero_si128();
                for b in bytes {
                    hits = _mm_or_si128(hits, _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)));
                }
                _mm_movemask_epi8(hits) as u32
            }
        }

        #[inline(always)]
        pub fn escapable(chunk: &[u8; super::LEN]) -> bool {
            // SAFETY: as in `mask`.
            unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                // Unsigned `b <= 0x1f` is `max(b, 0x1f) == 0x1f` (SSE2 has no unsigned compare).
                let low = _mm_set1_epi8(0x1f);
                let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                _mm_movemask_epi8(_mm_or_si128(control, _mm_or_si128(quote, backslash))) != 0
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    mod imp {
        #[inline(always)]
        pub fn mask<const N: usize>(chunk: &[u8; super::LEN], bytes: [u8; N]) -> u32 {
            let mut m = 0;
            for (k, c) in chunk.iter().enumerate() {
                if bytes.contains(c) {
                    m |= 1 << k;
                }
            }
            m
        }

        #[inline(always)]
        pub fn escapable(chunk: &[u8; super::LEN]) -> bool {
            chunk.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(src: &[u8]) -> Result<Vec<(String, String)>, ScanError> {
        let mut scanner = ObjectScanner::new(src)?;
        let mut out = Vec::new();
        while let Some(m) = scanner.next_member()? {
            let key = String::from_utf8_lossy(&src[m.key.clone()]).into_owned();
            let value = String::from_utf8_lossy(m.value(src)).into_owned();
            out.push((key, value));
        }
        Ok(out)
    }

    #[test]
    fn decimal_numbers() {
        for n in [0u64, 7, 10, 999, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            write_json_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn spans_of_every_kind_of_value() {
        let src = br#" { "a" : 1 , "b":"x\"}y", "c":[1,{"d":"]"}], "e":{"f":{}} ,"g":true,"h":null,"i":-1.5e+3 }
"#;
        let got = members(src).unwrap();
        let want = [
            (r#""a""#, "1"),
            (r#""b""#, r#""x\"}y""#),
            (r#""c""#, r#"[1,{"d":"]"}]"#),
            (r#""e""#, r#"{"f":{}}"#),
            (r#""g""#, "true"),
            (r#""h""#, "null"),
            (r#""i""#, "-1.5e+3"),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
    }

    #[test]
    fn model_nested_or_inside_strings_is_not_top_level() {
        let src = br#"{"messages":[{"role":"user","content":"\"model\": \"x\"","model":"inner"}],"meta":{"model":"m"},"model":"gpt-4o"}"#;
        let found = find_member(src, "model").unwrap().unwrap();
        assert_eq!(found.value(src), br#""gpt-4o""#);
        let mut scanner = ObjectScanner::new(src).unwrap();
        let mut n = 0;
        while let Some(m) = scanner.next_member().unwrap() {
            n += usize::from(m.key_is(src, "model"));
        }
        assert_eq!(n, 1);
        assert_eq!(scanner.close_brace(), Some(src.len() - 1));
        assert_eq!(scanner.member_count(), 3);
    }

    #[test]
    fn escaped_keys_compare_decoded() {
        let src = br#"{"mod\u0065l":"x","model\\":"y"}"#;
        let mut scanner = ObjectScanner::new(src).unwrap();
        let first = scanner.next_member().unwrap().unwrap();
        let second = scanner.next_member().unwrap().unwrap();
        assert!(first.key_is(src, "model"));
        assert!(!second.key_is(src, "model"));
        assert!(second.key_is(src, "model\\"));
        // Raw bytes equal to a name that has a backslash: the key decodes to something else.
        assert!(!second.key_is(src, r"model\\"));
        // Escaped keys no longer than the name are never it; longer ones are decoded.
        let src = br#"{"\u0061":1,"a\n":2,"\ud83d\ude00":3}"#;
        let mut scanner = ObjectScanner::new(src).unwrap();
        let (a, nl, emoji) = (scanner.next_member().unwrap().unwrap(), scanner.next_member().unwrap().unwrap(), scanner.next_member().unwrap().unwrap());
        assert!(a.key_is(src, "a") && !a.key_is(src, "\\u0061") && !a.key_is(src, "ab"));
        assert!(nl.key_is(src, "a\n") && !nl.key_is(src, "a\\n") && !nl.key_is(src, "an"));
        assert!(emoji.key_is(src, "😀") && !emoji.key_is(src, "x"));
    }

    #[test]
    fn empty_object_and_nested_scan() {
        let src = b"{ }";
        let mut scanner = ObjectScanner::new(src).unwrap();
        assert_eq!(scanner.next_member().unwrap(), None);
        assert_eq!(scanner.next_member().unwrap(), None);
        assert_eq!(scanner.close_brace(), Some(2));
        assert_eq!(scanner.member_count(), 0);

        let src = br#"{"so":{"a":1},"x":2} trailing"#;
        // Not a valid document, but the nested object can still be scanned on its own.
        assert!(members(src).is_err());
        let mut inner = ObjectScanner::at(src, 6).unwrap();
        assert!(inner.next_member().unwrap().unwrap().key_is(src, "a"));
        assert_eq!(inner.next_member().unwrap(), None);
        assert_eq!(inner.close_brace(), Some(12));
    }

    #[test]
    fn malformed_objects_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            b"",
            b" ",
            b"[]",
            b"\"x\"",
            b"{",
            b"{\"",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":}",
            b"{\"a\" 1}",
            b"{\"a\":1,}",
            b"{\"a\":1 \"b\":2}",
            b"{a:1}",
            b"{\"a\":\"x}",
            b"{\"a\":\"x\\\"}",
            b"{\"a\":[1,2}",
            b"{\"a\":{}}}",
            b"{\"a\":1}x",
            b"{\"a\":\"\\",
            b"{\"a\":,}",
            b"{,}",
        ];
        for src in bad {
            assert!(members(src).is_err(), "{:?}", String::from_utf8_lossy(src));
        }
        // Every prefix of a valid object is an error (truncated bodies), never a panic.
        let good = br#"{"model":"m","messages":[{"content":"a\"b"}],"n":1}"#;
        assert!(members(good).is_ok());
        for cut in 0..good.len() {
            assert!(members(&good[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn json_string_writer_escapes() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é/");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é/""#.as_bytes());
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é/");
        // Strings with nothing to escape take the copy path; one escapable byte anywhere,
        // first or last, takes the escaping one.
        let long_plain = "abcdefghijklmnopqrstuvwxyz é 😀 0123456789 ~\u{7f}\u{80}ÿ";
        let mut cases: Vec<String> = ["", "gen-1a2b-XyZ", "mock/echo-1 é 😀", "\"", "x\\", "\u{1f}y", "\u{7f}"]
            .map(String::from)
            .to_vec();
        cases.push(long_plain.to_string());
        // One escapable byte at every offset of a string spanning several 16-byte blocks.
        for at in 0..=long_plain.len() {
            if long_plain.is_char_boundary(at) {
                for special in ["\"", "\\", "\n", "\u{0}", "\u{1f}"] {
                    cases.push(format!("{}{special}{}", &long_plain[..at], &long_plain[at..]));
                }
            }
        }
        for s in &cases {
            let s = s.as_str();
            let mut out = b"[".to_vec();
            write_json_string(&mut out, s);
            let back: String = serde_json::from_slice(&out[1..]).unwrap();
            assert_eq!(back, s);
            assert_eq!(out[1..], serde_json::to_vec(s).unwrap()[..], "{s:?}");
        }
    }

    #[test]
    fn unescaped_keys_compare_whole() {
        let src = br#"{"model":1,"models":2,"mode":3}"#;
        let mut scanner = ObjectScanner::new(src).unwrap();
        let members: Vec<Member> = std::iter::from_fn(|| scanner.next_member().unwrap()).collect();
        let named: Vec<bool> = members.iter().map(|m| m.key_is(src, "model")).collect();
        assert_eq!(named, [true, false, false]);
        assert!(members[1].key_is(src, "models") && members[2].key_is(src, "mode"));
    }

    /// The scan one byte at a time, as it was before the block search: the reference.
    fn skip_value_bytewise(src: &[u8], start: usize) -> Option<usize> {
        fn string(src: &[u8], start: usize) -> Option<usize> {
            let mut i = start + 1;
            while i < src.len() {
                match src[i] {
                    b'"' => return Some(i + 1),
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
            None
        }
        match src.get(start)? {
            b'"' => string(src, start),
            b'{' | b'[' => {
                let (mut depth, mut i) = (0usize, start);
                while i < src.len() {
                    match src[i] {
                        b'"' => {
                            i = string(src, i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                None
            }
            _ => skip_value(src, start).ok(),
        }
    }

    #[test]
    fn block_search_ends_values_where_a_bytewise_scan_does() {
        // Quotes, escapes and brackets at every offset of a 16-byte block and across block
        // ends, strings shorter and longer than the inline search covers, and every
        // truncation of each.
        let long = "x".repeat(70);
        let mut samples = vec![
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi [there] {x}"}}],"usage":{"prompt_tokens":5}}"#.to_string(),
            format!(r#"["{long}"{long}\",{{"a":"{long}"}}, "\\", "]"]"#),
            r#"{"a":"\"}", "b":["\\\"", "[{"], "c":{"d":[[[]]]}}"#.to_string(),
        ];
        for pad in 0..20 {
            let p = " ".repeat(pad);
            samples.push(format!(r#"{{{p}"k{p}"q":{p}[1,{p}"s\"{p}]"{p},"z":{{}}{p}}}"#));
            samples.push(format!(r#""{p}\\{p}"{p}""#));
        }
        for sample in &samples {
            let src = sample.as_bytes();
            for end in 0..=src.len() {
                let cut = &src[..end];
                assert_eq!(skip_value(cut, 0).ok(), skip_value_bytewise(cut, 0), "{:?}", String::from_utf8_lossy(cut));
            }
        }
    }
}
