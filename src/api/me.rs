//! `GET /me`: the caller's account, balance, monthly cap and current markup tier. The same
//! object, plus keys, is the admin's `GET /admin/accounts/{id}`.

use serde_json::{json, Value};

use super::error::ApiError;
use super::Reply;
use crate::app::App;
use crate::billing::money::usd_json;
use crate::billing::tiers;
use crate::config::Config;
use crate::store::records::AccountRecord;

fn percent(bps: u32) -> f64 {
    bps as f64 / 100.0
}

fn tier_json(t: tiers::Tier) -> Value {
    json!({"min_spend_usd": usd_json(t.min_spend), "markup_percent": percent(t.markup_bps)})
}

/// An account as shown to its owner and the operator (never its password hash).
pub fn account_json(app: &App, config: &Config, a: &AccountRecord) -> Value {
    let bal = app.ledger.account(a.id).unwrap_or_default();
    let now = crate::store::now_secs();
    let (month_spend, month_held) = app.caps.account_spent(a.id, now);
    let (bps, source) = app.markup(config, a.id);
    let spend = app.tiers.spend_30d(a.id);
    let ladder = &config.billing.tiers;
    json!({
        "id": a.id,
        "email": a.email,
        "created_at": a.created_at,
        "suspended": a.suspended,
        "has_password": a.password_hash.is_some(),
        "balance": usd_json(bal.balance),
        "reserved": usd_json(bal.reserved),
        "total_credits": usd_json(bal.total_credits()),
        "total_usage": usd_json(bal.total_usage),
        "monthly_cap_usd": a.monthly_cap_nano.map(usd_json),
        "month_spend_usd": usd_json(month_spend),
        "month_in_flight_usd": usd_json(month_held),
        "markup_percent": percent(bps),
        "markup": {
            "percent": percent(bps),
            // "tier" (from 30-day spend), "override" (set by the operator) or "default".
            "source": source,
            "override_percent": a.markup_override_bps.map(percent),
            "spend_30d_usd": usd_json(spend),
            "tier": tiers::tier_for(ladder, spend).map(tier_json),
            "next_tier": tiers::next_tier(ladder, spend).map(tier_json),
            "computed_at": app.tiers.computed_at(),
        },
    })
}

/// `GET /me`.
pub fn me(app: &App, config: &Config, account_id: u64) -> Result<Reply, ApiError> {
    let a = app.account(account_id).ok_or_else(|| ApiError::not_found(format!("no account {account_id}")))?;
    Ok(Reply::json(200, &account_json(app, config, &a)))
}
