//! Self-service API keys: create (secret shown once), list, change, revoke (at once, even
//! under load), expiry, and tokens per minute.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An account with `credit` USD and a login token.
fn funded(gw: &Gateway, credit: &str) -> (u64, String) {
    let (id, _, token) = gw.signed_up("keys");
    let r = gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": credit}));
    assert_eq!(r.status(), 200);
    (id, token)
}

#[test]
fn the_secret_is_shown_once_and_limits_can_change() {
    let gw = Gateway::start_accounts("", "");
    let (id, token) = funded(&gw, "5");
    let created = gw.call_ok(
        "POST",
        &token,
        "/v1/keys",
        Some(json!({"name": "ci", "rate_limit_rpm": 100, "daily_cap_usd": "1.50", "monthly_cap_usd": 20,
                    "tokens_per_minute": 5000, "allowed_models": ["mock/*"], "platform": "intl"})),
        201,
    );
    let secret = created["key"].as_str().unwrap().to_string();
    let key_id = created["id"].as_u64().unwrap();
    assert!(secret.starts_with("sk-tg-"));
    assert_eq!(created["redacted"].as_str().unwrap().chars().count(), 13);
    assert_eq!((usd(&created["daily_cap_usd"]), usd(&created["monthly_cap_usd"])), (1.5, 20.0));
    assert_eq!(created["allowed_models"], json!(["mock/*"]));
    assert_eq!(created["last_used"], Value::Null);

    // Used once: last_used is set (tracked in memory, shown at once).
    assert_eq!(gw.chat(&secret, hello("mock/echo-1")).status(), 200);
    let list = gw.call_ok("GET", &token, "/v1/keys", None, 200);
    let keys = list["data"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].get("key").is_none());
    assert!(keys[0]["last_used"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!((keys[0]["name"].as_str(), keys[0]["tokens_per_minute"].as_u64()), (Some("ci"), Some(5000)));
    // The secret never appears again: not in the listing, not in the admin view.
    assert!(!list.to_string().contains(&secret));
    let admin_view = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), None, 200);
    assert!(!admin_view.to_string().contains(&secret));
    assert_eq!(admin_view["keys"][0]["id"].as_u64(), Some(key_id));

    // PATCH: rename, clear one limit, change another; absent fields stay.
    let patched = gw.call_ok(
        "PATCH",
        &token,
        &format!("/v1/keys/{key_id}"),
        Some(json!({"name": "renamed", "rate_limit_rpm": null, "daily_cap_usd": "2"})),
        200,
    );
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["rate_limit_rpm"], Value::Null);
    assert_eq!(usd(&patched["daily_cap_usd"]), 2.0);
    assert_eq!(usd(&patched["monthly_cap_usd"]), 20.0);
    assert!(patched.get("key").is_none());
    // The new limits apply to the next request: no rate-limit headers any more.
    let r = gw.chat(&secret, hello("mock/echo-1"));
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit").is_none());
    // Bad bodies and unknown fields are 400 with the field.
    for (body, param) in [(json!({"rate_limit_rpm": -1}), "rate_limit_rpm"), (json!({"platform": "mars"}), "platform"), (json!({"nmae": "x"}), "nmae")] {
        let r = gw.call("PATCH", &token, &format!("/v1/keys/{key_id}"), Some(body));
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().unwrap()["error"]["param"], param);
    }

    // Another account cannot see or touch the key: 404, as for a missing one.
    let (_, other) = funded(&gw, "1");
    assert_eq!(gw.call("PATCH", &other, &format!("/v1/keys/{key_id}"), Some(json!({"name": "mine"}))).status(), 404);
    assert_eq!(gw.call("DELETE", &other, &format!("/v1/keys/{key_id}"), None).status(), 404);
    assert!(gw.call_ok("GET", &other, "/v1/keys", None, 200)["data"].as_array().unwrap().is_empty());

    // Revoke: refused at once, listed as revoked, idempotent, not changeable.
    let revoked = gw.call_ok("DELETE", &token, &format!("/v1/keys/{key_id}"), None, 200);
    assert_eq!(revoked["revoked"], true);
    assert!(revoked["revoked_at"].as_u64().is_some());
    let r = gw.chat(&secret, hello("mock/echo-1"));
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(&r.json().unwrap()), "invalid_api_key");
    assert_eq!(gw.call("DELETE", &token, &format!("/v1/keys/{key_id}"), None).status(), 200);
    assert_eq!(gw.call("PATCH", &token, &format!("/v1/keys/{key_id}"), Some(json!({"name": "back"}))).status(), 409);
    assert_eq!(gw.call_ok("GET", &token, "/v1/keys", None, 200)["data"][0]["revoked"], true);
}

#[test]
fn last_used_and_revocations_survive_a_restart() {
    let mut gw = Gateway::start_accounts("", "");
    let (_, token) = funded(&gw, "5");
    let a = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "a"})), 201);
    let b = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "b"})), 201);
    let (a_key, b_key) = (a["key"].as_str().unwrap().to_string(), b["key"].as_str().unwrap().to_string());
    assert_eq!(gw.chat(&a_key, hello("mock/echo-1")).status(), 200);
    assert_eq!(gw.chat(&b_key, hello("mock/echo-1")).status(), 200);
    // b's revocation carries its last use to the store; a's is flushed every 15 s, and
    // when keys are listed.
    gw.call_ok("DELETE", &token, &format!("/v1/keys/{}", b["id"]), None, 200);
    gw.call_ok("GET", &token, "/v1/keys", None, 200);
    std::thread::sleep(Duration::from_millis(300));
    gw.kill9();
    gw.spawn_with_env(&accounts_env());
    let list = gw.call_ok("GET", &token, "/v1/keys", None, 200);
    for k in list["data"].as_array().unwrap() {
        assert!(k["last_used"].as_u64().is_some(), "{k}");
    }
    assert_eq!(gw.chat(&b_key, hello("mock/echo-1")).status(), 401);
    assert_eq!(gw.chat(&a_key, hello("mock/echo-1")).status(), 200);
}

#[test]
fn expired_keys_are_refused() {
    let gw = Gateway::start_accounts("", "");
    let (_, token) = funded(&gw, "1");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let k = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "short", "expires_at": now + 2})), 201);
    let key = k["key"].as_str().unwrap();
    assert_eq!(gw.chat(key, hello("mock/echo-1")).status(), 200);
    std::thread::sleep(Duration::from_millis(2_600));
    let r = gw.chat(key, hello("mock/echo-1"));
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().unwrap()["error"]["message"].as_str().unwrap().contains("expired"));
}

/// Requests keep flowing on several threads while the key is revoked: every request sent
/// after the DELETE was answered is refused; nothing is refused before.
#[test]
fn revocation_under_load_is_immediate() {
    let gw = Gateway::start_accounts("", "");
    let (_, token) = funded(&gw, "50");
    let created = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "busy"})), 201);
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["id"].as_u64().unwrap();
    let stop = AtomicBool::new(false);
    // (sent at, status) for every request.
    let log: Mutex<Vec<(Instant, u16)>> = Mutex::new(Vec::new());
    let revoked_at = std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let c = client();
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let sent = Instant::now();
                    let status = c
                        .post(gw.url("/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&hello("mock/echo-1"))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16();
                    log.lock().unwrap().push((sent, status));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(600));
        gw.call_ok("DELETE", &token, &format!("/v1/keys/{key_id}"), None, 200);
        let answered = Instant::now();
        std::thread::sleep(Duration::from_millis(600));
        stop.store(true, Ordering::Relaxed);
        answered
    });
    let log = log.into_inner().unwrap();
    let before: Vec<u16> = log.iter().filter(|(t, _)| *t < revoked_at).map(|e| e.1).collect();
    let after: Vec<u16> = log.iter().filter(|(t, _)| *t >= revoked_at).map(|e| e.1).collect();
    assert!(before.iter().filter(|s| **s == 200).count() >= 4, "load before the revoke: {before:?}");
    assert!(before.iter().all(|s| *s == 200 || *s == 401), "{before:?}");
    assert!(after.len() >= 4, "load after the revoke: {after:?}");
    assert!(after.iter().all(|s| *s == 401), "a request after the revocation was served: {after:?}");
}

/// Tokens per minute: a request is admitted while the tokens already counted in the last
/// minute are under the limit, so the request that crosses it is the last one served.
#[test]
fn tokens_per_minute_refuse_at_the_boundary() {
    let gw = Gateway::start_accounts("", "");
    let (_, token) = funded(&gw, "5");
    let limit = 100u64;
    let key = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "tpm", "tokens_per_minute": limit})), 201)["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut counted = 0u64;
    let mut served = 0;
    loop {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-words", "20")
            .json(&hello("mock/echo-1"))
            .send()
            .unwrap();
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=61).contains(&retry));
            assert_eq!(error_code(&r.json().unwrap()), "rate_limit_exceeded");
            break;
        }
        assert_eq!(r.status(), 200);
        let body: Value = r.json().unwrap();
        // Admitted: everything counted before it was under the limit.
        assert!(counted < limit, "admitted with {counted} tokens counted");
        counted += body["usage"]["total_tokens"].as_u64().unwrap();
        served += 1;
        assert!(served < 50, "never refused");
    }
    assert!(counted >= limit, "refused with only {counted} tokens counted");
    // Concurrent requests now: all refused, the window is full.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10).map(|_| s.spawn(|| gw.chat(&key, hello("mock/echo-1")).status().as_u16())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 429), "{statuses:?}");
}

/// A cap set on a key that had none counts what the key already spent this month.
#[test]
fn a_cap_added_later_counts_earlier_spend() {
    let gw = Gateway::start_accounts("", "");
    let (_, token) = funded(&gw, "5");
    let k = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "later"})), 201);
    let (key, key_id) = (k["key"].as_str().unwrap().to_string(), k["id"].as_u64().unwrap());
    let body = json!({"model": "mock/echo-1", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..10 {
        let r = gw.chat(&key, body.clone());
        assert_eq!(r.status(), 200);
        r.text().unwrap();
    }
    // Each request reserves ≈ $0.000125 (85 body bytes, 20 max tokens) and costs ≈ $0.000023.
    let spent = usd(&gw.credits(&key)["data"]["total_usage"]);
    assert!(spent > 0.0001, "ten requests spent {spent}");
    // A cap $0.00005 above today's spend: a fresh count would admit the next reservation,
    // the seeded one (spend so far + reservation > cap) must not.
    let cap = format!("{:.9}", spent + 0.00005);
    gw.call_ok("PATCH", &token, &format!("/v1/keys/{key_id}"), Some(json!({"daily_cap_usd": cap})), 200);
    let r = gw.chat(&key, body.clone());
    assert_eq!(r.status(), 402);
    assert_eq!(error_code(&r.json().unwrap()), "spend_cap_exceeded");
    // Lifted again: served.
    gw.call_ok("PATCH", &token, &format!("/v1/keys/{key_id}"), Some(json!({"daily_cap_usd": null})), 200);
    assert_eq!(gw.chat(&key, body).status(), 200);
}
