//! Money: exact charges, reservations, no charge on failure, no overspend, crash consistency.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// nano-USD for `mock/echo-1` ($1 / $2 per 1M tokens): 1,000 nano per prompt token, 2,000 per
/// completion token.
fn echo_cost_nano(prompt: u64, completion: u64) -> i64 {
    (prompt * 1000 + completion * 2000) as i64
}

fn nano(usd_value: &Value) -> i64 {
    (usd(usd_value) * 1e9).round() as i64
}

#[test]
fn a_completion_is_charged_exactly_from_reported_usage() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    let r = gw.chat(&key, hello("mock/echo-1"));
    assert_eq!(r.status(), 200);
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let body: Value = r.json().unwrap();
    let (p, c) = (body["usage"]["prompt_tokens"].as_u64().unwrap(), body["usage"]["completion_tokens"].as_u64().unwrap());
    let g = gw.generation_eventually(&key, &gen_id);
    assert_eq!(g["tokens_prompt"].as_u64().unwrap(), p);
    assert_eq!(g["tokens_completion"].as_u64().unwrap(), c);
    assert_eq!(nano(&g["total_cost"]), echo_cost_nano(p, c));
    assert_eq!(g["model"], "mock/echo-1");
    assert_eq!(g["provider"], "mock");
    assert_eq!(g["status"], "success");
    // The body id finds it too.
    let by_body = gw.generation_eventually(&key, body["id"].as_str().unwrap());
    assert_eq!(by_body["id"], gen_id.as_str());
    let credits = gw.credits(&key)["data"].clone();
    assert_eq!(nano(&credits["total_credits"]), 1_000_000_000);
    assert_eq!(nano(&credits["total_usage"]), echo_cost_nano(p, c));
    assert_eq!(nano(&credits["remaining"]), 1_000_000_000 - echo_cost_nano(p, c));
}

#[test]
fn insufficient_balance_is_402_and_the_upstream_is_not_called() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("0");
    gw.mock.clear();
    let r = gw.chat(&key, hello("mock/echo-1"));
    assert_eq!(r.status(), 402);
    assert_eq!(error_code(&r.json().unwrap()), "insufficient_balance");
    assert!(gw.mock.requests().is_empty(), "the upstream must not be called");
}

#[test]
fn failures_cost_nothing() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    for status in ["500", "503", "400", "429"] {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-status", status)
            .json(&hello("mock/echo-1"))
            .send()
            .unwrap();
        assert!(r.status().as_u16() >= 400);
        let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
        let g = gw.generation_eventually(&key, &gen_id);
        assert_eq!(nano(&g["total_cost"]), 0, "status {status}");
        assert_eq!(g["status"], "error");
    }
    // A timeout and a dead provider cost nothing either.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-hang", "1")
        .json(&hello("mock/echo-1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(gw.chat(&key, hello("dead/model")).status(), 503);
    std::thread::sleep(Duration::from_millis(300));
    let credits = gw.credits(&key)["data"].clone();
    assert_eq!(nano(&credits["remaining"]), 1_000_000_000);
    assert_eq!(nano(&credits["total_usage"]), 0);
}

#[test]
fn concurrent_requests_cannot_overspend_a_small_balance() {
    let gw = Gateway::start();
    // Each request reserves (prompt bytes ≈ 90) × 1,000 + (max_tokens 50) × 2,000 ≈ 190,000
    // nano. $0.002 = 2,000,000 nano covers about ten at once.
    let (_, key) = gw.account_with_key("0.002");
    let body = json!({"model": "mock/echo-1", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]});
    let results: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let (gw, key, body) = (&gw, &key, body.clone());
                s.spawn(move || {
                    client()
                        .post(gw.url("/v1/chat/completions"))
                        .bearer_auth(key)
                        .header("x-mock-delay-ms", "50")
                        .json(&body)
                        .send()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|s| **s == 200).count();
    let refused = results.iter().filter(|s| **s == 402).count();
    assert_eq!(ok + refused, 100, "every request answered 200 or 402: {results:?}");
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    std::thread::sleep(Duration::from_millis(300));
    let credits = gw.credits(&key)["data"].clone();
    assert!(nano(&credits["remaining"]) >= 0, "overspent: {credits}");
    assert_eq!(nano(&credits["reserved"]), 0, "reservations leaked: {credits}");
}

#[test]
fn balance_equals_grants_minus_charges_after_kill_9() {
    let mut gw = Gateway::start();
    let (account, key) = gw.account_with_key("1");
    // Charges in flight when the process dies: some commit, some may not, but never half.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (gw, key) = (&gw, &key);
            s.spawn(move || {
                for _ in 0..25 {
                    let _ = gw.chat(key, hello("mock/echo-1"));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(400));
    });
    gw.kill9();
    gw.spawn();
    let r = client().get(gw.url(&format!("/v1/admin/accounts/{account}"))).bearer_auth(ADMIN_TOKEN).send().unwrap();
    let acct: Value = r.json().unwrap();
    let credits = gw.credits(&key)["data"].clone();
    // remaining = total_credits - total_usage, where usage is the sum of recorded charges.
    assert_eq!(nano(&credits["remaining"]), nano(&credits["total_credits"]) - nano(&credits["total_usage"]));
    assert_eq!(nano(&credits["total_credits"]), 1_000_000_000, "the grant survived");
    assert_eq!(nano(&acct["balance"]), nano(&credits["remaining"]));
    // And the gateway still works after the crash.
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
}

#[test]
fn a_credit_grant_is_durable_when_acknowledged() {
    let mut gw = Gateway::start();
    let (account, key) = gw.account_with_key("0");
    let r = gw.admin_post(&format!("/v1/admin/accounts/{account}/credits"), json!({"amount_usd": 0.1, "note": "top-up"}));
    assert_eq!(r.status(), 200);
    assert_eq!(nano(&r.json::<Value>().unwrap()["balance"]), 100_000_000, "0.1 is exact, not a float");
    gw.kill9(); // immediately after the acknowledgement
    gw.spawn();
    assert_eq!(nano(&gw.credits(&key)["data"]["remaining"]), 100_000_000);
}
