//! Fault injection: the ways a mock response can go wrong on purpose.
//!
//! Faults come from two places and are merged per request:
//! - the global [`FaultConfig`] set with `POST /_mock/faults` (JSON, same field names as below),
//!   cleared with `DELETE /_mock/faults`;
//! - `x-mock-*` request headers, which override the global value of the same knob for that one
//!   request (boolean knobs are OR-ed: a header cannot switch off a global `hang`).
//!
//! Faults apply to the provider routes only (`/v1/...`), never to the `/_mock/...` control routes.

use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Upper bound on any injected delay, so a typo cannot wedge a test run for hours.
pub const MAX_DELAY_MS: u64 = 300_000;
/// How long `hang` waits for the client to go away before giving up and closing the connection.
pub const HANG_LIMIT: Duration = Duration::from_secs(120);
/// `Retry-After` sent with an injected 429 when nothing else was asked for.
pub const DEFAULT_RETRY_AFTER_S: u64 = 1;

pub const H_STATUS: &str = "x-mock-status";
pub const H_RETRY_AFTER: &str = "x-mock-retry-after";
pub const H_DELAY_MS: &str = "x-mock-delay-ms";
pub const H_CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
pub const H_WORDS: &str = "x-mock-words";
pub const H_HANG: &str = "x-mock-hang";
pub const H_CUT_AFTER: &str = "x-mock-cut-after";
pub const H_NO_USAGE: &str = "x-mock-no-usage";
pub const H_STREAM_ERROR_AFTER: &str = "x-mock-stream-error-after";

/// One set of fault knobs. All fields are optional in JSON; unknown fields are rejected so a
/// misspelled knob in a test fails loudly instead of silently doing nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Answer with this HTTP status (400..=599) and an OpenAI-shaped error body.
    pub status: Option<u16>,
    /// `Retry-After` seconds for an injected 429 (default 1).
    pub retry_after: Option<u64>,
    /// Sleep this long before the response header.
    pub delay_ms: Option<u64>,
    /// Sleep this long between streamed events.
    pub chunk_delay_ms: Option<u64>,
    /// Reply length in words (= completion tokens).
    pub words: Option<u32>,
    /// Read the request, then never answer; close after the client leaves or [`HANG_LIMIT`].
    pub hang: bool,
    /// Streaming only: after this many content chunks, drop the connection (no usage, no [DONE]).
    pub cut_after: Option<u32>,
    /// Never send `usage`, even when the client asked for it.
    pub no_usage: bool,
    /// Streaming only: after this many content chunks, send an SSE error event and end the body.
    pub stream_error_after: Option<u32>,
    /// Global only: probability in 0..=1 that a request gets a 500.
    pub fail_rate: f64,
    /// Global only: every Nth provider request (counted since the faults were set) gets a 500.
    pub fail_every: Option<u64>,
    /// Global only: the faults apply to the next N provider requests, then clear themselves.
    pub remaining: Option<u64>,
}

impl FaultConfig {
    /// Whether this config changes anything at all (used to skip the lock on the hot path).
    pub fn is_empty(&self) -> bool {
        *self == FaultConfig::default()
    }

    /// Reject values that cannot mean anything, with a message for the 400 body.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(400..=599).contains(&s) {
                return Err(format!("status must be 400..=599, got {s}"));
            }
        }
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(format!(
                "fail_rate must be in 0..=1, got {}",
                self.fail_rate
            ));
        }
        if self.fail_every == Some(0) {
            return Err("fail_every must be at least 1".into());
        }
        Ok(())
    }

    /// Read the per-request `x-mock-*` headers. Absent headers leave the knob unset.
    pub fn from_headers(headers: &HeaderMap) -> Result<FaultConfig, String> {
        let mut f = FaultConfig {
            status: header_num(headers, H_STATUS)?,
            retry_after: header_num(headers, H_RETRY_AFTER)?,
            delay_ms: header_num(headers, H_DELAY_MS)?,
            chunk_delay_ms: header_num(headers, H_CHUNK_DELAY_MS)?,
            words: header_num(headers, H_WORDS)?,
            cut_after: header_num(headers, H_CUT_AFTER)?,
            stream_error_after: header_num(headers, H_STREAM_ERROR_AFTER)?,
            ..Default::default()
        };
        f.hang = header_bool(headers, H_HANG)?;
        f.no_usage = header_bool(headers, H_NO_USAGE)?;
        f.validate()?;
        Ok(f)
    }

    /// The knobs in effect for one request: `self` (global) overridden by `req` (headers).
    pub fn overlay(&self, req: &FaultConfig) -> Faults {
        let delay = |ms: Option<u64>| Duration::from_millis(ms.unwrap_or(0).min(MAX_DELAY_MS));
        Faults {
            status: req.status.or(self.status),
            retry_after: req
                .retry_after
                .or(self.retry_after)
                .unwrap_or(DEFAULT_RETRY_AFTER_S),
            delay: delay(req.delay_ms.or(self.delay_ms)),
            chunk_delay: delay(req.chunk_delay_ms.or(self.chunk_delay_ms)),
            words: req.words.or(self.words),
            hang: req.hang || self.hang,
            cut_after: req.cut_after.or(self.cut_after),
            no_usage: req.no_usage || self.no_usage,
            stream_error_after: req.stream_error_after.or(self.stream_error_after),
        }
    }

    /// Whether the `nth` provider request (1-based, since the faults were set) fails with a 500
    /// under `fail_every` / `fail_rate`. `roll` is a uniform sample in 0..1, passed in so this
    /// stays pure and testable.
    pub fn rolls_failure(&self, nth: u64, roll: f64) -> bool {
        let every = self
            .fail_every
            .is_some_and(|n| n > 0 && nth.is_multiple_of(n));
        every || roll < self.fail_rate
    }
}

/// The resolved knobs for one request (see [`FaultConfig`] for their meaning).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    pub status: Option<u16>,
    pub retry_after: u64,
    pub delay: Duration,
    pub chunk_delay: Duration,
    pub words: Option<u32>,
    pub hang: bool,
    pub cut_after: Option<u32>,
    pub no_usage: bool,
    pub stream_error_after: Option<u32>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| format!("header {name} is not ASCII")),
    }
}

fn header_num<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    match header_str(headers, name)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("header {name}: expected a non-negative integer, got {s:?}")),
    }
}

fn header_bool(headers: &HeaderMap, name: &str) -> Result<bool, String> {
    match header_str(headers, name)? {
        None => Ok(false),
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(format!("header {name}: expected 1 or 0, got {s:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn parses_every_header() {
        let h = headers(&[
            (H_STATUS, "429"),
            (H_RETRY_AFTER, "7"),
            (H_DELAY_MS, "10"),
            (H_CHUNK_DELAY_MS, "5"),
            (H_WORDS, "30"),
            (H_HANG, "1"),
            (H_CUT_AFTER, "3"),
            (H_NO_USAGE, "true"),
            (H_STREAM_ERROR_AFTER, " 2 "),
        ]);
        let f = FaultConfig::from_headers(&h).unwrap();
        assert_eq!(f.status, Some(429));
        assert_eq!(f.retry_after, Some(7));
        assert_eq!(f.delay_ms, Some(10));
        assert_eq!(f.chunk_delay_ms, Some(5));
        assert_eq!(f.words, Some(30));
        assert!(f.hang && f.no_usage);
        assert_eq!(f.cut_after, Some(3));
        assert_eq!(f.stream_error_after, Some(2));
    }

    #[test]
    fn no_headers_means_no_faults() {
        let f = FaultConfig::from_headers(&HeaderMap::new()).unwrap();
        assert!(f.is_empty());
        assert_eq!(
            FaultConfig::default().overlay(&f),
            Faults {
                retry_after: DEFAULT_RETRY_AFTER_S,
                ..Default::default()
            }
        );
    }

    #[test]
    fn bad_headers_are_errors() {
        for (k, v) in [
            (H_STATUS, "abc"),
            (H_STATUS, "200"),
            (H_STATUS, "99999"),
            (H_DELAY_MS, "-1"),
            (H_HANG, "maybe"),
            (H_WORDS, "1.5"),
        ] {
            let err = FaultConfig::from_headers(&headers(&[(k, v)]));
            assert!(err.is_err(), "{k}: {v} should be rejected");
        }
    }

    #[test]
    fn headers_override_global() {
        let global = FaultConfig {
            status: Some(500),
            words: Some(5),
            delay_ms: Some(10_000_000),
            no_usage: true,
            ..Default::default()
        };
        let req = FaultConfig {
            status: Some(429),
            ..Default::default()
        };
        let f = global.overlay(&req);
        assert_eq!(f.status, Some(429));
        assert_eq!(f.words, Some(5));
        assert!(f.no_usage);
        // Delays are clamped.
        assert_eq!(f.delay, Duration::from_millis(MAX_DELAY_MS));
    }

    #[test]
    fn json_config_round_trip_and_validation() {
        let f: FaultConfig =
            serde_json::from_str(r#"{"fail_rate":0.5,"fail_every":3,"remaining":2}"#).unwrap();
        assert_eq!(f.fail_every, Some(3));
        assert!(f.validate().is_ok());
        assert!(serde_json::from_str::<FaultConfig>(r#"{"stauts":500}"#).is_err());
        let bad: FaultConfig = serde_json::from_str(r#"{"fail_rate":2}"#).unwrap();
        assert!(bad.validate().is_err());
        let bad: FaultConfig = serde_json::from_str(r#"{"fail_every":0}"#).unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn failure_rolls() {
        let every3 = FaultConfig {
            fail_every: Some(3),
            ..Default::default()
        };
        let fails: Vec<u64> = (1..=9).filter(|n| every3.rolls_failure(*n, 0.99)).collect();
        assert_eq!(fails, vec![3, 6, 9]);
        let half = FaultConfig {
            fail_rate: 0.5,
            ..Default::default()
        };
        assert!(half.rolls_failure(1, 0.1));
        assert!(!half.rolls_failure(1, 0.7));
        assert!(!FaultConfig::default().rolls_failure(1, 0.0));
    }
}
