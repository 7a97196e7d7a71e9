//! Usage rollups, markup tiers and the account-wide monthly cap.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Exact nano-USD from a decimal string like "0.000023".
fn nano(text: &str) -> i64 {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<9}");
    int.parse::<i64>().unwrap() * 1_000_000_000 + frac[..9].parse::<i64>().unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn usage_rollups_equal_the_sum_of_generations() {
    let gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("usage");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "10"}));
    let k1 = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "one"})), 201);
    let k2 = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "two"})), 201);
    let keys = [(k1["id"].as_u64().unwrap(), k1["key"].as_str().unwrap().to_string()), (k2["id"].as_u64().unwrap(), k2["key"].as_str().unwrap().to_string())];
    let mut gen_ids = Vec::new();
    for i in 0..9 {
        let (_, key) = &keys[i % 2];
        let model = if i % 3 == 0 { "mock/big" } else { "mock/echo-1" };
        let mut req = client().post(gw.url("/v1/chat/completions")).bearer_auth(key).header("x-mock-words", (3 + i).to_string());
        if i == 4 {
            req = req.header("x-mock-status", "500"); // an upstream failure: recorded, not billed
        }
        let r = req.json(&hello(model)).send().unwrap();
        assert_eq!(r.status().as_u16(), if i == 4 { 502 } else { 200 });
        let gen = r.headers()["x-generation-id"].to_str().unwrap().to_string();
        // Read the whole body: a client gone before the end is recorded as an error.
        r.text().unwrap();
        gen_ids.push((i % 2, gen));
    }
    // What /generation says, summed per model and per key.
    #[derive(Default, Debug, PartialEq)]
    struct Sums {
        requests: u64,
        failed: u64,
        prompt: u64,
        completion: u64,
        cost: i64,
    }
    let mut by_model: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_key: BTreeMap<u64, Sums> = BTreeMap::new();
    for (k, gen) in &gen_ids {
        let g = gw.generation_eventually(&keys[*k].1, gen);
        for s in [by_model.entry(g["model"].as_str().unwrap().to_string()).or_default(), by_key.entry(keys[*k].0).or_default()] {
            s.requests += 1;
            s.failed += u64::from(g["status"] == "error");
            s.prompt += g["tokens_prompt"].as_u64().unwrap();
            s.completion += g["tokens_completion"].as_u64().unwrap();
            s.cost += nano(g["total_cost_usd"].as_str().unwrap());
        }
    }
    let sums = |row: &Value| Sums {
        requests: row["requests"].as_u64().unwrap(),
        failed: row["failed"].as_u64().unwrap(),
        prompt: row["tokens_prompt"].as_u64().unwrap(),
        completion: row["tokens_completion"].as_u64().unwrap(),
        cost: nano(row["cost_usd"].as_str().unwrap()),
    };
    let u = gw.call_ok("GET", &token, "/v1/usage?group_by=model", None, 200);
    let got: BTreeMap<String, Sums> = u["data"].as_array().unwrap().iter().map(|r| (r["model"].as_str().unwrap().to_string(), sums(r))).collect();
    assert_eq!(got, by_model);
    assert_eq!(by_model.values().map(|s| s.failed).sum::<u64>(), 1, "{by_model:?}");
    let u = gw.call_ok("GET", &token, "/v1/usage?group_by=key", None, 200);
    let got: BTreeMap<u64, Sums> = u["data"].as_array().unwrap().iter().map(|r| (r["key_id"].as_u64().unwrap(), sums(r))).collect();
    assert_eq!(got, by_key);
    // The total equals what the ledger charged.
    let total = sums(&u["total"]);
    assert_eq!(total.requests, 9);
    let credits = gw.credits(&keys[0].1);
    assert!((usd(&credits["data"]["total_usage"]) - total.cost as f64 / 1e9).abs() < 1e-9);

    // day,model,key: one day (today), the same totals.
    let today = u["to"].as_str().unwrap().to_string();
    let u = gw.call_ok("GET", &token, &format!("/v1/usage?from={today}&to={today}&group_by=day,model,key"), None, 200);
    assert!(u["data"].as_array().unwrap().iter().all(|r| r["day"] == today.as_str() && r["model"].is_string() && r["key_id"].is_u64()));
    assert_eq!(sums(&u["total"]), total);
    // Unix seconds work too; a range before any use is empty; no grouping gives one total.
    let u = gw.call_ok("GET", &token, &format!("/v1/usage?from={}&group_by=", now_secs() - 86_400), None, 200);
    assert_eq!(u["data"].as_array().unwrap().len(), 1);
    assert_eq!(sums(&u["data"][0]), total);
    let u = gw.call_ok("GET", &token, "/v1/usage?from=2020-01-01&to=2020-01-31", None, 200);
    assert!(u["data"].as_array().unwrap().is_empty());
    // The operator, for a named account.
    let u = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/usage?account_id={id}&group_by="), None, 200);
    assert_eq!(sums(&u["total"]), total);
    // Bad parameters.
    for q in ["from=yesterday", "to=2025-02-30", "group_by=hour", "from=2025-03-02&to=2025-03-01", "from=2020-01-01&to=2025-01-01"] {
        assert_eq!(gw.call("GET", &token, &format!("/v1/usage?{q}"), None).status(), 400, "{q}");
    }
}

#[test]
fn usage_includes_a_request_as_soon_as_it_was_answered() {
    // Charges are group-committed ~50 ms after their answers; the report commits what is
    // queued first. (Three tries 2 ms apart only cover the moment between the answer and the
    // logging phase that submits its record.)
    let gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("fresh-usage");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "10"}));
    let k = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "one"})), 201);
    let key = k["key"].as_str().unwrap().to_string();
    for n in 1..=3u64 {
        let r = client().post(gw.url("/v1/chat/completions")).bearer_auth(&key).json(&hello("mock/echo-1")).send().unwrap();
        assert_eq!(r.status(), 200);
        r.text().unwrap();
        let mut seen = 0;
        for _ in 0..3 {
            let u = gw.call_ok("GET", &token, "/v1/usage?group_by=", None, 200);
            seen = u["total"]["requests"].as_u64().unwrap();
            if seen == n {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(seen, n, "the report right after request {n}");
    }
}

/// Tiers by 30-day spend, with the operator's recompute as the controllable clock.
#[test]
fn the_tier_follows_thirty_day_spend() {
    // $0.10 per token, so one request spends about $1.40; tiers at $0 (40 %) and $1 (25 %).
    let extra = r#"
[[models]]
slug = "mock/pricey"
provider = "mock"
upstream_model = "pricey"
context_length = 100000
max_output_tokens = 100
input_per_mtok = 100000
output_per_mtok = 100000

[billing]
tier_recompute_secs = 86400
[[billing.tiers]]
min_spend_usd = 0
markup_percent = 40
[[billing.tiers]]
min_spend_usd = 1
markup_percent = 25
"#;
    let gw = Gateway::start_accounts("", extra);
    let (id, _, token) = gw.signed_up("tier");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "100"}));
    let me = gw.call_ok("GET", &token, "/v1/me", None, 200);
    assert_eq!((me["markup"]["percent"].as_f64(), me["markup"]["source"].as_str()), (Some(40.0), Some("tier")));

    let key = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "t"})), 201)["key"].as_str().unwrap().to_string();
    let r = gw.chat(&key, json!({"model": "mock/pricey", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status(), 200);
    let gen = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let cost = usd(&gw.generation_eventually(&key, &gen)["total_cost"]);
    assert!(cost >= 1.0, "one request spends over $1: {cost}");

    // Not yet recomputed: still the base tier.
    assert_eq!(gw.call_ok("GET", &token, "/v1/me", None, 200)["markup"]["percent"], 40.0);
    let now = now_secs();
    let r = gw.call_ok("POST", ADMIN_TOKEN, "/v1/admin/recompute-tiers", Some(json!({})), 200);
    assert!(r["accounts"].as_u64().unwrap() >= 1);
    let me = gw.call_ok("GET", &token, "/v1/me", None, 200);
    assert_eq!(me["markup"]["percent"], 25.0, "{me}");
    assert!((usd(&me["markup"]["spend_30d_usd"]) - cost).abs() < 1e-9);
    assert_eq!(me["markup"]["next_tier"], Value::Null);
    // 29 days on, the spend is still in the window; 30 days on, it has left it.
    gw.call_ok("POST", ADMIN_TOKEN, "/v1/admin/recompute-tiers", Some(json!({"now": now + 29 * 86_400})), 200);
    assert_eq!(gw.call_ok("GET", &token, "/v1/me", None, 200)["markup"]["percent"], 25.0);
    gw.call_ok("POST", ADMIN_TOKEN, "/v1/admin/recompute-tiers", Some(json!({"now": now + 30 * 86_400})), 200);
    let me = gw.call_ok("GET", &token, "/v1/me", None, 200);
    assert_eq!((me["markup"]["percent"].as_f64(), usd(&me["markup"]["spend_30d_usd"])), (Some(40.0), 0.0));
    // An operator override wins over the tier; null gives the tier back.
    gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"markup_percent": 5})), 200);
    let me = gw.call_ok("GET", &token, "/v1/me", None, 200);
    assert_eq!((me["markup"]["percent"].as_f64(), me["markup"]["source"].as_str()), (Some(5.0), Some("override")));
    gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"markup_percent": null})), 200);
    gw.call_ok("POST", ADMIN_TOKEN, "/v1/admin/recompute-tiers", None, 200);
    assert_eq!(gw.call_ok("GET", &token, "/v1/me", None, 200)["markup"]["percent"], 25.0);
    // Only the operator may move the clock.
    assert_eq!(gw.call("POST", &token, "/v1/admin/recompute-tiers", None).status(), 401);
}

/// The account-wide monthly cap holds for 100 concurrent requests over several keys.
#[test]
fn account_monthly_cap_holds_under_100_concurrent_requests() {
    let gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("cap");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "100"}));
    let me = gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"monthly_cap_usd": "0.002"})), 200);
    assert_eq!(usd(&me["monthly_cap_usd"]), 0.002);
    let keys: Vec<String> = (0..4)
        .map(|i| gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": format!("k{i}")})), 201)["key"].as_str().unwrap().to_string())
        .collect();
    let body = json!({"model": "mock/echo-1", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let statuses: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                let (key, body, gw) = (&keys[i % 4], &body, &gw);
                s.spawn(move || {
                    let r = client()
                        .post(gw.url("/v1/chat/completions"))
                        .bearer_auth(key)
                        .header("x-mock-delay-ms", "100")
                        .json(body)
                        .send()
                        .unwrap();
                    (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&Value> = statuses.iter().filter(|(s, _)| *s == 402).map(|(_, b)| b).collect();
    assert!(ok >= 1 && ok + refused.len() == 100, "{:?}", statuses.iter().map(|s| s.0).collect::<Vec<_>>());
    assert!(!refused.is_empty(), "100 requests cannot all fit under the cap");
    assert!(refused.iter().all(|b| error_code(b) == "spend_cap_exceeded"));
    std::thread::sleep(Duration::from_millis(300));
    let me = gw.call_ok("GET", &token, "/v1/me", None, 200);
    assert!(usd(&me["total_usage"]) <= 0.002 + 1e-12, "spent over the cap: {me}");
    assert!(usd(&me["month_spend_usd"]) <= 0.002 + 1e-12);
    assert_eq!(usd(&me["month_in_flight_usd"]), 0.0);
    // Raising the cap admits again; clearing it removes it.
    gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"monthly_cap_usd": null})), 200);
    assert_eq!(gw.chat(&keys[0], body.clone()).status(), 200);
}
