//! `GET /usage?from=&to=&group_by=day,model,key`: requests, tokens and cost per group, read
//! from the usage rollups (one contiguous range of rows per account), never from a scan of
//! generations. The rollups are written in the same transaction as each generation record,
//! so these figures always equal the sums of the account's generations. The route flushes the
//! store writer first, so every request answered before the report was asked for is in it.
//!
//! `from` and `to` are UTC days, inclusive: `YYYY-MM-DD`, or unix seconds (the day that
//! second falls in). Defaults: `to` today, `from` 29 days before `to`. At most 366 days.
//! `group_by` is any comma-separated subset of `day`, `model`, `key` (default `day`; empty
//! for one total). Failed requests (upstream errors) count in `requests` and `failed` and
//! cost nothing.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::{query_param, Reply};
use crate::app::App;
use crate::billing::money::{format_usd, usd_json};
use crate::limits::calendar::{civil_from_days, day_index, days_from_civil};
use crate::store::UsageRollup;

const MAX_DAYS: u64 = 366;

/// (day, model, key id), each present when grouped by.
type Group = (Option<u64>, Option<String>, Option<u64>);

/// A UTC day index from `YYYY-MM-DD` or unix seconds.
pub fn parse_day(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(day_index(secs));
    }
    let mut parts = text.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // Reject dates that do not exist (2025-02-30 would roll into March).
    let back = civil_from_days(days);
    (back.month == m && back.day == d).then_some(days as u64)
}

pub fn format_day(day: u64) -> String {
    let d = civil_from_days(day as i64);
    format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
}

fn sums_json(r: &UsageRollup) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("requests".into(), json!(r.requests));
    m.insert("failed".into(), json!(r.failed));
    m.insert("tokens_prompt".into(), json!(r.tokens_prompt));
    m.insert("tokens_completion".into(), json!(r.tokens_completion));
    m.insert("cost".into(), usd_json(r.cost_nano));
    // The exact decimal, for reconciliation (a JSON number may be rounded by its reader).
    m.insert("cost_usd".into(), json!(format_usd(r.cost_nano)));
    m
}

/// `GET /usage` for `account_id`.
pub fn usage(app: &App, account_id: u64, query: Option<&str>) -> Result<Reply, ApiError> {
    let bad = |p: &str| ApiError::invalid_request(format!("'{p}' must be a UTC date YYYY-MM-DD or unix seconds")).with_param(p);
    let today = day_index(crate::store::now_secs());
    let to = match query_param(query, "to").filter(|s| !s.is_empty()) {
        Some(s) => parse_day(&s).ok_or_else(|| bad("to"))?,
        None => today,
    };
    let from = match query_param(query, "from").filter(|s| !s.is_empty()) {
        Some(s) => parse_day(&s).ok_or_else(|| bad("from"))?,
        None => to.saturating_sub(29),
    };
    if from > to {
        return Err(ApiError::invalid_request("'from' is after 'to'").with_param("from"));
    }
    if to - from >= MAX_DAYS {
        return Err(ApiError::invalid_request(format!("at most {MAX_DAYS} days per query")).with_param("from"));
    }
    let group_by = query_param(query, "group_by").unwrap_or_else(|| "day".into());
    let mut by = (false, false, false); // day, model, key
    for g in group_by.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        match g {
            "day" => by.0 = true,
            "model" => by.1 = true,
            "key" => by.2 = true,
            _ => {
                return Err(ApiError::invalid_request(format!("unknown group_by '{g}' (day, model, key)")).with_param("group_by"))
            }
        }
    }
    let rows = app.store.usage_rollups(account_id, from, to).map_err(|e| {
        log::error!("reading usage failed: {e}");
        ApiError::internal("reading usage failed")
    })?;
    let mut groups: BTreeMap<Group, UsageRollup> = BTreeMap::new();
    let mut total = UsageRollup::default();
    for (day, key_id, model, sums) in rows {
        let group = (by.0.then_some(day), by.1.then_some(model), by.2.then_some(key_id));
        groups.entry(group).or_default().add(&sums);
        total.add(&sums);
    }
    let data: Vec<Value> = groups
        .into_iter()
        .map(|((day, model, key), sums)| {
            let mut m = Map::new();
            if let Some(day) = day {
                m.insert("day".into(), json!(format_day(day)));
            }
            if let Some(model) = model {
                m.insert("model".into(), json!(model));
            }
            if let Some(key) = key {
                m.insert("key_id".into(), json!(key));
            }
            m.extend(sums_json(&sums));
            Value::Object(m)
        })
        .collect();
    let groups: Vec<&str> = [(by.0, "day"), (by.1, "model"), (by.2, "key")].iter().filter(|g| g.0).map(|g| g.1).collect();
    Ok(Reply::json(
        200,
        &json!({
            "account_id": account_id,
            "from": format_day(from),
            "to": format_day(to),
            "group_by": groups,
            "data": data,
            "total": Value::Object(sums_json(&total)),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_both_ways() {
        assert_eq!(parse_day("1970-01-02"), Some(1));
        assert_eq!(parse_day("2024-02-29").map(format_day).as_deref(), Some("2024-02-29"));
        assert_eq!(parse_day("2025-02-29"), None);
        assert_eq!(parse_day("2025-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
        assert_eq!(parse_day("86400"), Some(1));
        assert_eq!(parse_day("1735689599").map(format_day).as_deref(), Some("2024-12-31"));
    }
}
