//! Per-key limits set at key creation: requests per minute and daily/monthly spend caps.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn key_with(gw: &Gateway, credit: &str, limits: Value) -> String {
    let (account, _) = gw.account_with_key(credit);
    let mut body = json!({"name": "limited"});
    for (k, v) in limits.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = gw.admin_post(&format!("/v1/admin/accounts/{account}/keys"), body);
    assert_eq!(r.status(), 201);
    r.json::<Value>().unwrap()["key"].as_str().unwrap().to_string()
}

#[test]
fn requests_per_minute_are_enforced_with_headers() {
    let gw = Gateway::start();
    let key = key_with(&gw, "5", json!({"rate_limit_rpm": 5}));
    let mut statuses = Vec::new();
    for i in 0..7 {
        let r = gw.chat(&key, hello("mock/echo-1"));
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert!(h.get("x-ratelimit-reset").is_some());
        if i < 5 {
            assert_eq!(h["x-ratelimit-remaining"].to_str().unwrap(), (4 - i).to_string());
        }
        let status = r.status().as_u16();
        if status == 429 {
            let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=61).contains(&retry));
            assert_eq!(error_code(&r.json().unwrap()), "rate_limit_exceeded");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
    // A key without a limit carries no rate-limit headers.
    let (_, free) = gw.account_with_key("1");
    assert!(gw.chat(&free, hello("mock/echo-1")).headers().get("x-ratelimit-limit").is_none());
}

#[test]
fn concurrent_requests_at_the_boundary_admit_exactly_the_limit() {
    let gw = Gateway::start();
    let key = key_with(&gw, "5", json!({"rate_limit_rpm": 40}));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..60)
            .map(|_| s.spawn(|| gw.chat(&key, hello("mock/echo-1")).status().as_u16()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 40, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20);
}

#[test]
fn a_daily_spend_cap_holds_under_concurrency_and_across_restarts() {
    let mut gw = Gateway::start();
    // Each request reserves ≈ (90 prompt bytes × 1,000 + 20 max_tokens × 2,000) ≈ 130,000 nano
    // and costs ≈ 5 × 1,000 + 9 × 2,000 = 23,000 nano. A $0.0005 cap admits a few at once.
    let key = key_with(&gw, "5", json!({"daily_cap_usd": "0.0005"}));
    let body = json!({"model": "mock/echo-1", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    client()
                        .post(gw.url("/v1/chat/completions"))
                        .bearer_auth(&key)
                        .header("x-mock-delay-ms", "100")
                        .json(&body)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(ok >= 1 && statuses.iter().all(|s| *s == 200 || *s == 402), "{statuses:?}");
    // Spend until refused; the cap is never passed.
    let mut refused = None;
    for _ in 0..100 {
        let r = gw.chat(&key, body.clone());
        if r.status() == 402 {
            refused = Some(r.json::<Value>().unwrap());
            break;
        }
    }
    let refused = refused.expect("the cap must eventually refuse");
    assert_eq!(error_code(&refused), "spend_cap_exceeded");
    std::thread::sleep(Duration::from_millis(300));
    let spent = usd(&gw.credits(&key)["data"]["total_usage"]);
    assert!(spent <= 0.0005 + 1e-12, "spent {spent} over the cap");
    // After a restart the cap still remembers today's spend.
    gw.kill9();
    gw.spawn();
    let r = gw.chat(&key, body.clone());
    assert_eq!(r.status(), 402);
    assert_eq!(error_code(&r.json().unwrap()), "spend_cap_exceeded");
}
