//! Money: integer nano-USD inside, decimal USD at the API.
//!
//! Every amount the gateway keeps is an `i64` count of nano-USD (10⁻⁹ USD), so sums are exact
//! and a balance can always be re-derived from the ledger by plain integer addition. Floats
//! appear in exactly two places, both at the edges: configured prices (`f64` from TOML, turned
//! into nano once at load) and JSON numbers shown to clients ([`usd_json`]).

/// An amount of money in nano-USD (1 USD = 1_000_000_000 nano). Signed: grants are positive,
/// charges negative, and a balance may dip below zero by at most the configured overdraft.
pub type Nano = i64;

/// Nano-USD per USD.
pub const NANO_PER_USD: i64 = 1_000_000_000;

/// Decimal places of a nano-USD amount written in USD.
const DECIMALS: usize = 9;

/// How [`parse_decimal`] treats digits beyond the 9th decimal place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// Any non-zero digit past nano precision is an error (money typed by a person).
    Exact,
    /// Round half away from zero to the nearest nano (prices derived from config floats).
    Nearest,
}

/// Parses a decimal USD amount into nano-USD, exactly.
///
/// Accepts an optional sign, digits, and an optional fraction: "12", "0.5", "-3.25", "+1.",
/// ".25". Rejected: empty text, exponents ("1e-3"), "NaN"/"inf", separators ("1,000"), values
/// beyond ±9_223_372_036.854775807 USD, and **more than 9 decimals unless the extra digits are
/// all zero** ("0.0000000010" is fine, "0.0000000015" is an error): an amount a person typed is
/// never silently rounded.
pub fn parse_usd(text: &str) -> Result<Nano, String> {
    parse_decimal(text, Rounding::Exact)
}

/// Formats nano-USD as a plain decimal USD string with no trailing zeros and no exponent:
/// 1_500_000_000 → "1.5", 1 → "0.000000001", -2_000_000_000 → "-2", 0 → "0".
pub fn format_usd(n: Nano) -> String {
    let mut out = Vec::with_capacity(24);
    push_usd(&mut out, n);
    // Only ASCII digits, '-' and '.' were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`format_usd`] appended to `out`: digit by digit, with no formatting machinery or
/// temporary strings (it runs for every request's access-log line).
pub fn push_usd(out: &mut Vec<u8>, n: Nano) {
    // unsigned_abs so i64::MIN does not overflow.
    let abs = n.unsigned_abs();
    let whole = abs / NANO_PER_USD as u64;
    let mut frac = abs % NANO_PER_USD as u64;
    if n < 0 {
        out.push(b'-');
    }
    crate::providers::json_scan::write_json_u64(out, whole);
    if frac == 0 {
        return;
    }
    // The nine fraction digits, then the trailing zeros dropped.
    let mut digits = [b'0'; DECIMALS];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    let len = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    out.push(b'.');
    out.extend_from_slice(&digits[..len]);
}

/// A JSON number for an amount shown to clients.
///
/// serde_json is built without `arbitrary_precision`, so a JSON number cannot carry arbitrary
/// decimal text. Whole-dollar amounts become JSON integers (exact). Others are produced by
/// formatting the exact decimal with [`format_usd`] and parsing *that* text to the nearest f64;
/// serde_json then prints the shortest text that round-trips, which is the same decimal for any
/// amount with at most 15 significant digits (e.g. every amount under $1,000,000 with nano
/// precision). The value may be written in exponent form ("1e-9"). This is for display only:
/// nothing read back from a client is ever parsed as f64 into the ledger (use [`parse_usd`]).
pub fn usd_json(n: Nano) -> serde_json::Value {
    if n % NANO_PER_USD == 0 {
        return serde_json::Value::from(n / NANO_PER_USD);
    }
    let text = format_usd(n);
    match text
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        Some(num) => serde_json::Value::Number(num),
        // Unreachable for finite i64-derived text; fall back to the string rather than panic.
        None => serde_json::Value::String(text),
    }
}

/// Converts a configured price in USD per 1M tokens (e.g. 2.50) into nano-USD per 1M tokens
/// (2_500_000_000), rounding to the nearest nano.
///
/// The float is first printed with Rust's shortest round-trip formatting, which recovers the
/// decimal written in the config file (0.15 → "0.15", not 0.1499999999999999944…), and that text
/// is parsed exactly. Negative, NaN, infinite and out-of-range prices are rejected.
pub fn price_per_mtok_to_nano(usd_per_mtok: f64) -> Result<Nano, String> {
    if !usd_per_mtok.is_finite() {
        return Err(format!("price must be a finite number, got {usd_per_mtok}"));
    }
    if usd_per_mtok < 0.0 {
        return Err(format!("price must not be negative, got {usd_per_mtok}"));
    }
    // `Display` for f64 never uses exponent notation, so the text is always plain decimal.
    parse_decimal(&format!("{usd_per_mtok}"), Rounding::Nearest)
        .map_err(|e| format!("invalid price {usd_per_mtok}: {e}"))
}

/// The cost of a request in nano-USD:
/// `(prompt × in_per_mtok + completion × out_per_mtok) / 1_000_000 × (1 + markup_bps / 10_000)`.
///
/// Prices are nano-USD per 1M tokens; `markup_bps` is in basis points (2500 = 25%). Computed in
/// i128 with a single division at the end, and **rounded up** to a whole nano (toward +∞): the
/// gateway never charges less than the exact cost, and by at most 1 nano (10⁻⁹ USD) more.
/// Saturates at `i64::MAX`/`i64::MIN` instead of overflowing (unreachable with real values).
pub fn token_cost(
    prompt: u64,
    completion: u64,
    in_per_mtok: Nano,
    out_per_mtok: Nano,
    markup_bps: u32,
) -> Nano {
    const DENOMINATOR: i128 = 1_000_000 * 10_000; // per-1M-token prices × basis points
    let numerator = (prompt as i128)
        .checked_mul(in_per_mtok as i128)
        .and_then(|a| {
            (completion as i128)
                .checked_mul(out_per_mtok as i128)
                .map(|b| (a, b))
        })
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|base| base.checked_mul(10_000 + markup_bps as i128));
    let Some(numerator) = numerator else {
        // Only reachable with absurd inputs (≈10^38); fail closed in the gateway's favour.
        return Nano::MAX;
    };
    let cost = ceil_div(numerator, DENOMINATOR);
    cost.clamp(Nano::MIN as i128, Nano::MAX as i128) as Nano
}

/// Division rounding toward +∞ for a positive divisor.
fn ceil_div(numerator: i128, divisor: i128) -> i128 {
    let q = numerator.div_euclid(divisor);
    if numerator.rem_euclid(divisor) == 0 {
        q
    } else {
        q + 1
    }
}

/// The shared decimal parser behind [`parse_usd`] and [`price_per_mtok_to_nano`].
fn parse_decimal(text: &str, rounding: Rounding) -> Result<Nano, String> {
    let s = text.trim();
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return Err(format!("not a decimal USD amount: {text:?}"));
    }

    // Whole dollars, accumulated in i128 so a long digit string cannot wrap before the check.
    let mut nano: i128 = 0;
    for b in int_part.bytes() {
        nano = nano * 10 + i128::from(b - b'0');
        if nano > i64::MAX as i128 {
            return Err(format!("amount out of range: {text:?}"));
        }
    }
    nano *= NANO_PER_USD as i128;

    // Fraction: the first 9 digits are nano; anything past that is rounded or rejected.
    let (kept, extra) = frac_part.split_at(frac_part.len().min(DECIMALS));
    let mut frac: i128 = 0;
    for b in kept.bytes() {
        frac = frac * 10 + i128::from(b - b'0');
    }
    frac *= 10i128.pow((DECIMALS - kept.len()) as u32);
    nano += frac;
    if extra.bytes().any(|b| b != b'0') {
        match rounding {
            Rounding::Exact => {
                return Err(format!(
                    "more than 9 decimal places (finer than 1 nano-USD): {text:?}"
                ))
            }
            // Half away from zero: look at the first dropped digit only.
            Rounding::Nearest => {
                if extra.as_bytes()[0] >= b'5' {
                    nano += 1;
                }
            }
        }
    }

    let signed = if negative { -nano } else { nano };
    Nano::try_from(signed).map_err(|_| format!("amount out of range: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_plain_decimals() {
        assert_eq!(parse_usd("12"), Ok(12 * NANO_PER_USD));
        assert_eq!(parse_usd("0.5"), Ok(500_000_000));
        assert_eq!(parse_usd("-3.25"), Ok(-3_250_000_000));
        assert_eq!(parse_usd("+1."), Ok(NANO_PER_USD));
        assert_eq!(parse_usd(".25"), Ok(250_000_000));
        assert_eq!(parse_usd(" 0.000000001 "), Ok(1));
        assert_eq!(
            parse_usd("0.0000000010"),
            Ok(1),
            "trailing zeros past nano are exact"
        );
        assert_eq!(parse_usd("9223372036.854775807"), Ok(i64::MAX));
        assert_eq!(parse_usd("-9223372036.854775807"), Ok(-i64::MAX));
    }

    #[test]
    fn parse_rejects_non_decimals_and_overflow() {
        for bad in [
            "",
            "-",
            ".",
            "abc",
            "1e-3",
            "1E3",
            "NaN",
            "inf",
            "-inf",
            "1,5",
            "1.2.3",
            "--1",
            "0x10",
            "1 000",
            "0.0000000015",
            "9223372036.854775808",
            "99999999999999999999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        assert_eq!(format_usd(1_500_000_000), "1.5");
        assert_eq!(format_usd(1), "0.000000001");
        assert_eq!(format_usd(-1), "-0.000000001");
        assert_eq!(format_usd(0), "0");
        assert_eq!(format_usd(-2 * NANO_PER_USD), "-2");
        assert_eq!(format_usd(i64::MIN), "-9223372036.854775808");
        for n in [
            0,
            1,
            -1,
            42,
            999_999_999,
            1_000_000_001,
            -123_456_789_012,
            i64::MAX,
            -i64::MAX,
        ] {
            assert_eq!(parse_usd(&format_usd(n)), Ok(n));
        }
    }

    #[test]
    fn push_usd_matches_the_formatted_decimal() {
        // The plain formatting-machinery version, as the reference.
        fn reference(n: Nano) -> String {
            let abs = n.unsigned_abs();
            let (whole, frac) = (abs / NANO_PER_USD as u64, abs % NANO_PER_USD as u64);
            let sign = if n < 0 { "-" } else { "" };
            if frac == 0 {
                return format!("{sign}{whole}");
            }
            format!("{sign}{whole}.{}", format!("{frac:09}").trim_end_matches('0'))
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut cases = vec![0, 1, -1, 10, 100_000_000, 120_000_000, NANO_PER_USD, i64::MAX, i64::MIN, -i64::MAX];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x as i64) >> (x % 60));
        }
        for n in cases {
            let mut out = b"prefix:".to_vec();
            push_usd(&mut out, n);
            assert_eq!(out, format!("prefix:{}", reference(n)).into_bytes(), "{n}");
        }
    }

    #[test]
    fn json_numbers_show_the_exact_decimal() {
        assert_eq!(usd_json(12 * NANO_PER_USD).to_string(), "12");
        assert_eq!(usd_json(1_500_000_000).to_string(), "1.5");
        assert_eq!(usd_json(-3_250_000_000).to_string(), "-3.25");
        assert_eq!(
            usd_json(123_456_123_456_789).to_string(),
            "123456.123456789"
        );
        let tiny: f64 = usd_json(1).to_string().parse().unwrap_or(0.0);
        assert_eq!(tiny, 1e-9);
    }

    #[test]
    fn prices_convert_to_nearest_nano() {
        assert_eq!(price_per_mtok_to_nano(2.50), Ok(2_500_000_000));
        assert_eq!(price_per_mtok_to_nano(0.15), Ok(150_000_000));
        assert_eq!(price_per_mtok_to_nano(0.0), Ok(0));
        assert_eq!(price_per_mtok_to_nano(1e-10), Ok(0));
        assert_eq!(
            price_per_mtok_to_nano(5e-10),
            Ok(1),
            "half rounds away from zero"
        );
        assert_eq!(price_per_mtok_to_nano(0.0000000014), Ok(1));
        assert!(price_per_mtok_to_nano(-1.0).is_err());
        assert!(price_per_mtok_to_nano(f64::NAN).is_err());
        assert!(price_per_mtok_to_nano(f64::INFINITY).is_err());
        assert!(price_per_mtok_to_nano(1e30).is_err());
    }

    #[test]
    fn cost_is_exact_or_rounded_up() {
        // 1000 prompt tokens at $2.50/M + 500 completion tokens at $10/M = $0.0025 + $0.005.
        let cost = token_cost(1000, 500, 2_500_000_000, 10_000_000_000, 0);
        assert_eq!(cost, 7_500_000);
        // 25% markup.
        assert_eq!(
            token_cost(1000, 500, 2_500_000_000, 10_000_000_000, 2500),
            9_375_000
        );
        // One token at $0.15/M = 150 nano exactly; at $0.1500001/M = 150.0001 nano → 151.
        assert_eq!(token_cost(1, 0, 150_000_000, 0, 0), 150);
        assert_eq!(token_cost(1, 0, 150_000_100, 0, 0), 151);
        // Sub-nano costs round up to 1 nano, zero stays zero.
        assert_eq!(token_cost(1, 0, 1, 0, 0), 1);
        assert_eq!(token_cost(0, 0, 5_000_000_000, 5_000_000_000, 2500), 0);
        // Markup rounding: 3 nano × 1.0001 = 3.0003 → 4.
        assert_eq!(token_cost(3, 0, 1_000_000, 0, 1), 4);
        // Absurd inputs saturate instead of wrapping.
        assert_eq!(
            token_cost(u64::MAX, u64::MAX, i64::MAX, i64::MAX, u32::MAX),
            Nano::MAX
        );
    }
}
