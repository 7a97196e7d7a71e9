//! What a request costs, by the unit its endpoint is priced in.
//!
//! Every price is nano-USD per some number of units (1M tokens, 1M characters, a minute of
//! audio, one image). The cost is Σ units × price / per, times (1 + markup), computed in i128
//! and rounded up to a whole nano-USD once, so rounding never favours the gateway twice.

use super::money::Nano;
use crate::config::Model;
use crate::metering::usage::Usage;

/// The billable quantity of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Units {
    Tokens(Usage),
    /// Generated images at one unit price (by size).
    Images { count: u64, unit_price: Nano },
    /// Input characters (speech).
    Chars(u64),
    /// Milliseconds of audio (transcriptions): fine enough that the one rounding is the
    /// final one to a whole nano-USD.
    AudioMillis(u64),
}

impl Units {
    pub fn tokens(&self) -> Usage {
        match self {
            Units::Tokens(u) => *u,
            _ => Usage::default(),
        }
    }
}

const PER_MILLION: u64 = 1_000_000;

pub fn cost(model: &Model, units: &Units, markup_bps: u32) -> Nano {
    match *units {
        Units::Tokens(u) => {
            // Cached reads and writes are part of prompt_tokens; price them separately only
            // when the model has cache prices, else they are ordinary prompt tokens.
            let read = model.cache_read_per_mtok.map(|p| (u.cached_prompt_tokens, p));
            let write = model.cache_write_per_mtok.map(|p| (u.cache_write_tokens, p));
            let special = read.map_or(0, |r| r.0).saturating_add(write.map_or(0, |w| w.0));
            let plain = u.prompt_tokens.saturating_sub(special);
            // On the stack: this runs twice per request (the reservation and the charge).
            // An absent cache price is a part of zero.
            let parts = [
                (plain, model.input_per_mtok, PER_MILLION),
                (u.completion_tokens, model.output_per_mtok, PER_MILLION),
                read.map_or((0, 0, PER_MILLION), |(n, p)| (n, p, PER_MILLION)),
                write.map_or((0, 0, PER_MILLION), |(n, p)| (n, p, PER_MILLION)),
            ];
            charge(&parts, markup_bps)
        }
        Units::Images { count, unit_price } => charge(&[(count, unit_price, 1)], markup_bps),
        Units::Chars(n) => charge(&[(n, model.input_per_mchar.unwrap_or(0), PER_MILLION)], markup_bps),
        Units::AudioMillis(ms) => match model.audio_per_minute {
            Some(p) => charge(&[(ms, p, 60_000)], markup_bps),
            None => 0,
        },
    }
}

/// Σ count × price / per, × (1 + markup), rounded up. Saturates instead of overflowing.
fn charge(parts: &[(u64, Nano, u64)], markup_bps: u32) -> Nano {
    // Bring every part to a common denominator (the product of the distinct `per`s is small).
    let denom: i128 = parts.iter().map(|p| p.2.max(1) as i128).fold(1, |a, b| if a % b == 0 { a } else { a * b });
    let numer: i128 = parts
        .iter()
        .map(|&(n, price, per)| n as i128 * price.max(0) as i128 * (denom / per.max(1) as i128))
        .sum();
    let numer = numer * (10_000 + markup_bps as i128);
    let denom = denom * 10_000;
    let c = (numer + denom - 1) / denom;
    c.min(Nano::MAX as i128) as Nano
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::money::token_cost;

    fn model() -> std::sync::Arc<Model> {
        let cfg = crate::config::from_toml_with_env(
            r#"
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[models]]
slug = "a/b"
provider = "p"
upstream_model = "b"
context_length = 1000
input_per_mtok = 3
output_per_mtok = 15
cache_read_per_mtok = 0.30
cache_write_per_mtok = 3.75
input_per_mchar = 15
audio_per_minute = 0.006
image_prices = { "1024x1024" = 0.04, default = 0.08 }
endpoints = ["chat", "images", "speech", "transcriptions"]
"#,
            &|_| None,
        )
        .unwrap();
        cfg.by_slug["a/b"].clone()
    }

    #[test]
    fn tokens_match_token_cost_without_cache() {
        let m = model();
        let u = Usage { prompt_tokens: 1234, completion_tokens: 567, ..Default::default() };
        assert_eq!(cost(&m, &Units::Tokens(u), 2500), token_cost(1234, 567, m.input_per_mtok, m.output_per_mtok, 2500));
    }

    #[test]
    fn cache_reads_and_writes_have_their_own_prices() {
        let m = model();
        let u = Usage { prompt_tokens: 1000, completion_tokens: 0, cached_prompt_tokens: 600, cache_write_tokens: 100 };
        // (300 × 3 + 600 × 0.30 + 100 × 3.75) USD per 1M tokens = 1455 USD/1M = 1,455,000 nano
        assert_eq!(cost(&m, &Units::Tokens(u), 0), 1_455_000);
    }

    #[test]
    fn images_chars_and_audio() {
        let m = model();
        assert_eq!(cost(&m, &Units::Images { count: 3, unit_price: m.image_price("1024x1024").unwrap() }, 0), 120_000_000);
        assert_eq!(m.image_price("256x256"), Some(80_000_000));
        assert_eq!(cost(&m, &Units::Chars(1000), 0), 15_000_000); // $15 / 1M chars → $0.015
        assert_eq!(cost(&m, &Units::AudioMillis(90_000), 0), 9_000_000); // 1.5 min × $0.006
        assert_eq!(cost(&m, &Units::AudioMillis(1_000), 0), 100_000);
        assert_eq!(cost(&m, &Units::AudioMillis(2_500), 0), 250_000); // 2.5 s, not rounded to 3
    }
}
