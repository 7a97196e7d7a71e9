//! The binary form of the two rows every request writes: `LedgerEntry` (LEDGER) and
//! `GenerationRecord` (GENERATIONS).
//!
//! Why: as serde_json a typical pair was ~140 + ~510 bytes, mostly field names, and the writer
//! thread encoded them and wrote and checksummed the pages they filled on every commit. In
//! this form they are ~45 + ~145 bytes and encode about ten times faster. Every other record
//! stays JSON (`tables::Row`): they are few and rarely written.
//!
//! Format, version 1: the version byte [`V1`]; a flags byte (the bools, which `Option`s are
//! present, the ledger kind); then the other fields in declaration order. Unsigned integers
//! are LEB128 varints, signed ones zigzag varints; strings are a varint byte length then
//! UTF-8; a `Vec` is a varint count then its items, each with its own flags byte. A row must
//! be consumed exactly. Decoding checks every length against what is left and never panics:
//! a truncated or garbled row is an error.
//!
//! Rows written before are JSON objects, which start with `{` (serde_json writes no leading
//! whitespace), never [`V1`]: readers tell the two apart by the first byte, so existing stores
//! need no migration and may hold both. A change of layout takes a new version byte, and
//! readers keep decoding the old ones. An optional field added later takes a flag bit of its
//! own and goes where the layout says (the generation's `upstream_id`, after `error`): rows
//! without the bit read as before, and a build that predates the bit refuses a row with it
//! (unknown flag) instead of misreading it.

use super::records::{AttemptRecord, GenerationRecord, LedgerEntry, LedgerKind};
use super::tables::{read_json, Row};

/// The version byte of the layout written now. Not `{` nor JSON whitespace.
pub const V1: u8 = 0x01;

// LedgerEntry flags.
const CHARGE: u8 = 1; // kind is Charge (else Grant)
const HAS_GENERATION_ID: u8 = 1 << 1;
const HAS_NOTE: u8 = 1 << 2;

// GenerationRecord flags.
const STREAMED: u8 = 1;
const USAGE_ESTIMATED: u8 = 1 << 1;
const HAS_ERROR: u8 = 1 << 2;
/// The provider's id, written after `error`: a flag added after V1's first rows (module doc).
const HAS_UPSTREAM_ID: u8 = 1 << 3;

// AttemptRecord flags. The attempt that answered usually served the record's own model and
// provider: then they are not stored twice.
const ATTEMPT_HAS_ERROR: u8 = 1;
const SAME_MODEL: u8 = 1 << 1;
const SAME_PROVIDER: u8 = 1 << 2;

impl Row for LedgerEntry {
    fn write_row(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let flags = flag(self.kind == LedgerKind::Charge, CHARGE)
            | flag(self.generation_id.is_some(), HAS_GENERATION_ID)
            | flag(self.note.is_some(), HAS_NOTE);
        out.extend_from_slice(&[V1, flags]);
        put_u64(out, self.seq);
        put_u64(out, self.account_id);
        put_i64(out, self.amount_nano);
        if let Some(id) = &self.generation_id {
            put_str(out, id);
        }
        if let Some(note) = &self.note {
            put_str(out, note);
        }
        put_u64(out, self.at);
        Ok(())
    }

    fn read_row(bytes: &[u8]) -> Result<Self, String> {
        let Some(mut r) = Reader::binary(bytes)? else { return read_json(bytes) };
        let flags = r.flags(CHARGE | HAS_GENERATION_ID | HAS_NOTE)?;
        // A struct expression evaluates its fields in the order written: the row's order.
        let entry = LedgerEntry {
            kind: if flags & CHARGE != 0 { LedgerKind::Charge } else { LedgerKind::Grant },
            seq: r.u64()?,
            account_id: r.u64()?,
            amount_nano: r.i64()?,
            generation_id: r.str_if(flags & HAS_GENERATION_ID != 0)?,
            note: r.str_if(flags & HAS_NOTE != 0)?,
            at: r.u64()?,
        };
        r.end()?;
        Ok(entry)
    }
}

impl Row for GenerationRecord {
    fn write_row(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let flags = flag(self.streamed, STREAMED)
            | flag(self.usage_estimated, USAGE_ESTIMATED)
            | flag(self.error.is_some(), HAS_ERROR)
            | flag(!self.upstream_id.is_empty(), HAS_UPSTREAM_ID);
        out.extend_from_slice(&[V1, flags]);
        put_str(out, &self.id);
        put_str(out, &self.body_id);
        put_u64(out, self.account_id);
        put_u64(out, self.key_id);
        put_str(out, &self.model);
        put_str(out, &self.provider);
        put_u64(out, self.tokens_prompt);
        put_u64(out, self.tokens_completion);
        put_i64(out, self.total_cost_nano);
        put_u64(out, self.latency_ms);
        put_u64(out, self.status.into());
        put_u64(out, self.created_at);
        put_u64(out, self.attempts.into());
        if let Some(error) = &self.error {
            put_str(out, error);
        }
        if !self.upstream_id.is_empty() {
            put_str(out, &self.upstream_id);
        }
        put_u64(out, self.attempt_log.len() as u64);
        for a in &self.attempt_log {
            let same_model = a.model == self.model;
            let same_provider = a.provider == self.provider;
            let flags = flag(a.error.is_some(), ATTEMPT_HAS_ERROR)
                | flag(same_model, SAME_MODEL)
                | flag(same_provider, SAME_PROVIDER);
            out.push(flags);
            if !same_model {
                put_str(out, &a.model);
            }
            if !same_provider {
                put_str(out, &a.provider);
            }
            put_str(out, &a.upstream_model);
            put_u64(out, a.status.into());
            put_u64(out, a.latency_ms);
            if let Some(error) = &a.error {
                put_str(out, error);
            }
        }
        Ok(())
    }

    fn read_row(bytes: &[u8]) -> Result<Self, String> {
        let Some(mut r) = Reader::binary(bytes)? else { return read_json(bytes) };
        let flags = r.flags(STREAMED | USAGE_ESTIMATED | HAS_ERROR | HAS_UPSTREAM_ID)?;
        // A struct expression evaluates its fields in the order written: the row's order.
        let mut g = GenerationRecord {
            streamed: flags & STREAMED != 0,
            usage_estimated: flags & USAGE_ESTIMATED != 0,
            id: r.str()?,
            body_id: r.str()?,
            account_id: r.u64()?,
            key_id: r.u64()?,
            model: r.str()?,
            provider: r.str()?,
            tokens_prompt: r.u64()?,
            tokens_completion: r.u64()?,
            total_cost_nano: r.i64()?,
            latency_ms: r.u64()?,
            status: r.u16()?,
            created_at: r.u64()?,
            attempts: r.u32()?,
            error: r.str_if(flags & HAS_ERROR != 0)?,
            upstream_id: r.str_if(flags & HAS_UPSTREAM_ID != 0)?.unwrap_or_default(),
            attempt_log: Vec::new(),
        };
        // No capacity from the count: a garbled count must not allocate. Each attempt takes
        // at least four bytes, so a bogus count fails at the end of the row.
        for _ in 0..r.u64()? {
            let flags = r.flags(ATTEMPT_HAS_ERROR | SAME_MODEL | SAME_PROVIDER)?;
            let model = if flags & SAME_MODEL != 0 { g.model.clone() } else { r.str()? };
            let provider = if flags & SAME_PROVIDER != 0 { g.provider.clone() } else { r.str()? };
            g.attempt_log.push(AttemptRecord {
                model,
                provider,
                upstream_model: r.str()?,
                status: r.u16()?,
                latency_ms: r.u64()?,
                error: r.str_if(flags & ATTEMPT_HAS_ERROR != 0)?,
            });
        }
        r.end()?;
        Ok(g)
    }
}

fn flag(set: bool, bit: u8) -> u8 {
    if set {
        bit
    } else {
        0
    }
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Zigzag: small magnitudes of either sign stay short (a charge is negative).
fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads a binary row front to back; every read checks what is left.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader past the version byte, or None for a row that is not binary (JSON).
    fn binary(bytes: &'a [u8]) -> Result<Option<Reader<'a>>, String> {
        match bytes.split_first() {
            Some((&V1, rest)) => Ok(Some(Reader { rest })),
            // Control bytes other than JSON's whitespace are kept for versions to come.
            Some((&b, _)) if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') => {
                Err(format!("unknown row version {b} (written by a newer build?)"))
            }
            _ => Ok(None),
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.rest.split_first().ok_or("truncated row")?;
        self.rest = rest;
        Ok(b)
    }

    /// A flags byte; a bit this version does not define means the row is not what we think.
    fn flags(&mut self, known: u8) -> Result<u8, String> {
        let flags = self.byte()?;
        if flags & !known != 0 {
            return Err(format!("unknown flags {flags:#04x}"));
        }
        Ok(flags)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte holds bit 63 only.
            if shift == 63 && bits > 1 {
                return Err("integer overflows 64 bits".into());
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("integer longer than 10 bytes".into())
    }

    fn i64(&mut self) -> Result<i64, String> {
        let z = self.u64()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32, String> {
        u32::try_from(self.u64()?).map_err(|_| "integer overflows 32 bits".into())
    }

    fn u16(&mut self) -> Result<u16, String> {
        u16::try_from(self.u64()?).map_err(|_| "integer overflows 16 bits".into())
    }

    fn str(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let len = usize::try_from(len).ok().filter(|&n| n <= self.rest.len()).ok_or("truncated row")?;
        let (s, rest) = self.rest.split_at(len);
        self.rest = rest;
        let s = std::str::from_utf8(s).map_err(|_| "a string is not UTF-8")?;
        Ok(s.to_owned())
    }

    fn str_if(&mut self, present: bool) -> Result<Option<String>, String> {
        if present {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }

    fn end(self) -> Result<(), String> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the row")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{decode, encode};
    use crate::store::StoreError;
    use std::fmt::Debug;

    fn attempt(model: &str, provider: &str, error: Option<&str>) -> AttemptRecord {
        AttemptRecord {
            model: model.into(),
            provider: provider.into(),
            upstream_model: "gpt-4o-mini-2024-07-18".into(),
            status: 502,
            latency_ms: 1_234,
            error: error.map(str::to_string),
        }
    }

    /// Every field set, every flag on, strings beyond ASCII, attempts on the record's own
    /// route and on others.
    fn full_generation() -> GenerationRecord {
        GenerationRecord {
            id: "gen-19b0f5c2a41-AbCdEf012345".into(),
            body_id: "chatcmpl-Ωmega ☃ 日本語 🚀".into(),
            upstream_id: "msg_01XFDUDYJgAACzvnptvVoYEL ✓".into(),
            account_id: 42,
            key_id: 4_242,
            model: "openai/gpt-4o-mini".into(),
            provider: "openai".into(),
            tokens_prompt: 1_500,
            tokens_completion: 321,
            total_cost_nano: 123_456_789,
            latency_ms: 2_345,
            status: 499,
            streamed: true,
            usage_estimated: true,
            created_at: 1_790_000_000,
            attempts: 3,
            error: Some("client went away — \"cut\"\n".into()),
            attempt_log: vec![
                attempt("anthropic/claude-sonnet-4", "anthropic", Some("timeout ⏱")),
                attempt("openai/gpt-4o-mini", "azure", Some("")),
                attempt("openai/gpt-4o-mini", "openai", None),
            ],
        }
    }

    /// Nothing set: empty strings, None, no attempts, zeros.
    fn empty_generation() -> GenerationRecord {
        GenerationRecord {
            id: String::new(),
            body_id: String::new(),
            upstream_id: String::new(),
            account_id: 0,
            key_id: 0,
            model: String::new(),
            provider: String::new(),
            tokens_prompt: 0,
            tokens_completion: 0,
            total_cost_nano: 0,
            latency_ms: 0,
            status: 0,
            streamed: false,
            usage_estimated: false,
            created_at: 0,
            attempts: 0,
            error: None,
            attempt_log: Vec::new(),
        }
    }

    fn max_generation(cost: i64) -> GenerationRecord {
        GenerationRecord {
            account_id: u64::MAX,
            key_id: u64::MAX,
            tokens_prompt: u64::MAX,
            tokens_completion: u64::MAX,
            total_cost_nano: cost,
            latency_ms: u64::MAX,
            status: u16::MAX,
            created_at: u64::MAX,
            attempts: u32::MAX,
            attempt_log: vec![AttemptRecord { status: u16::MAX, latency_ms: u64::MAX, ..Default::default() }],
            ..empty_generation()
        }
    }

    fn ledger(kind: LedgerKind, amount_nano: i64, generation_id: Option<&str>, note: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            seq: 7,
            account_id: 3,
            amount_nano,
            kind,
            generation_id: generation_id.map(str::to_string),
            note: note.map(str::to_string),
            at: 1_790_000_000_123,
        }
    }

    fn ledger_entries() -> Vec<LedgerEntry> {
        let max = LedgerEntry { seq: u64::MAX, account_id: u64::MAX, at: u64::MAX, ..ledger(LedgerKind::Grant, i64::MAX, None, None) };
        vec![
            ledger(LedgerKind::Charge, -1_234_567, Some("gen-19b0f5c2a41-AbCdEf012345"), Some("remboursé ✓")),
            ledger(LedgerKind::Grant, 5_000_000_000, None, None),
            ledger(LedgerKind::Grant, -1, None, Some("correction")),
            ledger(LedgerKind::Charge, 0, Some(""), Some("")),
            ledger(LedgerKind::Charge, i64::MIN, Some("g"), None),
            max,
        ]
    }

    fn generations() -> Vec<GenerationRecord> {
        vec![full_generation(), empty_generation(), max_generation(i64::MAX), max_generation(i64::MIN), max_generation(-1)]
    }

    fn round_trip<T: Row + PartialEq + Debug>(value: &T) -> Vec<u8> {
        let bytes = encode(value).expect("encode");
        assert_eq!(bytes[0], V1, "{value:?} is stored in the binary form");
        assert_eq!(&decode::<T>(&bytes, "row").expect("decode"), value);
        bytes
    }

    #[test]
    fn rows_round_trip() {
        for e in ledger_entries() {
            round_trip(&e);
        }
        for g in generations() {
            round_trip(&g);
        }
    }

    #[test]
    fn binary_rows_are_a_fraction_of_json() {
        let g = full_generation();
        let json = serde_json::to_vec(&g).unwrap();
        let binary = round_trip(&g);
        assert!(binary.len() * 2 < json.len(), "{} vs {} bytes", binary.len(), json.len());
        // Attempts on the record's route do not repeat its model and provider.
        let mut same = empty_generation();
        same.model = "openai/gpt-4o-mini".into();
        same.provider = "openai".into();
        let alone = encode(&same).unwrap().len();
        same.attempt_log.push(AttemptRecord { model: same.model.clone(), provider: same.provider.clone(), ..Default::default() });
        assert_eq!(round_trip(&same).len(), alone + 4, "flags, empty upstream model, status, latency");
    }

    /// The provider's id is an optional field behind its own flag: a record without one is
    /// written exactly as rows were before the field existed, so those rows read back as
    /// records without it.
    #[test]
    fn the_upstream_id_is_optional_and_flagged() {
        let with = full_generation();
        let without = GenerationRecord { upstream_id: String::new(), ..full_generation() };
        let (a, b) = (round_trip(&with), round_trip(&without));
        assert_eq!(a[1] & HAS_UPSTREAM_ID, HAS_UPSTREAM_ID);
        assert_eq!(b[1] & HAS_UPSTREAM_ID, 0);
        assert_eq!(a.len(), b.len() + 1 + with.upstream_id.len(), "a length byte and the id");
        // A row from before the field: the flags a V1 writer knew then, no id.
        let old = encode(&empty_generation()).unwrap();
        assert_eq!(old[1], 0);
        assert_eq!(decode::<GenerationRecord>(&old, "generation").unwrap().upstream_id, "");
    }

    /// Rows from before the binary form, as serde_json wrote them (fields added later absent).
    #[test]
    fn json_rows_still_decode() {
        for e in ledger_entries() {
            let json = serde_json::to_vec(&e).unwrap();
            assert_eq!(decode::<LedgerEntry>(&json, "ledger entry").unwrap(), e);
        }
        for g in generations() {
            let json = serde_json::to_vec(&g).unwrap();
            assert_eq!(decode::<GenerationRecord>(&json, "generation").unwrap(), g);
        }
        let old: LedgerEntry =
            decode(br#"{"seq":1,"account_id":2,"amount_nano":-300,"kind":"Charge","at":5}"#, "ledger entry").unwrap();
        assert_eq!(old, LedgerEntry { seq: 1, account_id: 2, at: 5, ..ledger(LedgerKind::Charge, -300, None, None) });
        let old: GenerationRecord = decode(
            br#"{"id":"gen-a","account_id":1,"key_id":2,"model":"m","provider":"p","tokens_prompt":3,"tokens_completion":4,"total_cost_nano":5,"latency_ms":6,"status":200,"created_at":7}"#,
            "generation",
        )
        .unwrap();
        assert_eq!((old.id.as_str(), old.body_id.as_str(), old.attempts, old.attempt_log.len()), ("gen-a", "", 0, 0));
    }

    fn err<T: Row + Debug>(bytes: &[u8]) -> String {
        match decode::<T>(bytes, "row") {
            Err(StoreError(e)) => e,
            Ok(v) => panic!("{bytes:?} decoded as {v:?}"),
        }
    }

    /// Every truncation of a row is an error (and the empty row a JSON one).
    #[test]
    fn truncated_rows_are_errors() {
        for e in ledger_entries() {
            let bytes = encode(&e).unwrap();
            for n in 0..bytes.len() {
                err::<LedgerEntry>(&bytes[..n]);
            }
        }
        for g in generations() {
            let bytes = encode(&g).unwrap();
            for n in 0..bytes.len() {
                err::<GenerationRecord>(&bytes[..n]);
            }
        }
    }

    #[test]
    fn garbled_rows_are_errors() {
        let row = encode(&full_generation()).unwrap();
        assert!(err::<GenerationRecord>(&[row.as_slice(), b"x"].concat()).contains("1 bytes after the row"));
        assert!(err::<GenerationRecord>(&[&[0x02], &row[1..]].concat()).contains("unknown row version 2"));
        assert!(err::<GenerationRecord>(&[&[V1, 0x80], &row[2..]].concat()).contains("unknown flags"));
        assert!(err::<LedgerEntry>(&[V1, 0x08]).contains("unknown flags"));
        // The id's length says more than there is.
        assert!(err::<GenerationRecord>(&[V1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a']).contains("truncated"));
        assert!(err::<GenerationRecord>(&[V1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).contains("overflows 64"));
        assert!(err::<GenerationRecord>(&[&[V1, 0], &[0x80; 11][..]].concat()).contains("longer than 10"));
        // Not UTF-8: the id's first byte.
        let mut bad = row.clone();
        bad[3] = 0xff;
        assert!(err::<GenerationRecord>(&bad).contains("UTF-8"));
        // A status beyond u16: the varint for 200 replaced by one for 70000.
        let empty = encode(&GenerationRecord { status: 200, ..empty_generation() }).unwrap();
        let at = empty.windows(2).position(|w| w == [0xc8, 0x01]).unwrap();
        let big = [&empty[..at], &[0xf0, 0xa2, 0x04], &empty[at + 2..]].concat();
        assert!(err::<GenerationRecord>(&big).contains("16 bits"));
        // A huge attempt count over a short row: an error, no allocation of that size.
        let empty = encode(&empty_generation()).unwrap();
        let huge = [&empty[..empty.len() - 1], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]].concat();
        assert!(err::<GenerationRecord>(&huge).contains("truncated"));
        // Not a row at all.
        assert!(err::<LedgerEntry>(b"garbage").contains("expected"));
        assert!(err::<LedgerEntry>(&[0xff, 0x00]).contains("expected"));
    }

    /// Random bytes and every single-byte change of valid rows: decoding returns, whatever it
    /// returns.
    #[test]
    fn no_input_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = V1;
            }
            let _ = decode::<GenerationRecord>(&bytes, "row");
            let _ = decode::<LedgerEntry>(&bytes, "row");
        }
        let rows = [encode(&full_generation()).unwrap(), encode(&ledger_entries()[0]).unwrap()];
        for row in rows {
            for i in 0..row.len() {
                for b in [0x00, 0x01, 0x7f, 0x80, 0xff, row[i] ^ 0x01] {
                    let mut bytes = row.clone();
                    bytes[i] = b;
                    let _ = decode::<GenerationRecord>(&bytes, "row");
                    let _ = decode::<LedgerEntry>(&bytes, "row");
                }
            }
        }
    }
}
