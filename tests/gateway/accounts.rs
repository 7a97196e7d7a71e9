//! Self-service accounts: register, login (JWT), /me, suspension, the operator's account
//! routes and the audit log.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Enough login attempts for a test that is not about the limit.
const MANY_LOGINS: &str = "login_attempts_per_minute = 1000";

#[test]
fn register_login_and_me() {
    let gw = Gateway::start_accounts("", "");
    let email = unique_email("me");
    let r = gw.register(&email, "correct horse battery");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().unwrap();
    assert_eq!(body["email"], email.as_str());
    let id = body["id"].as_u64().unwrap();
    // The same email again, in any case: 409.
    let r = gw.register(&email.to_uppercase(), "another password");
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(&r.json().unwrap()), "account_exists");
    // A short password and a bad email: 400 with the field.
    let r = gw.register(&unique_email("short"), "short");
    assert_eq!((r.status().as_u16(), r.json::<Value>().unwrap()["error"]["param"].clone()), (400, json!("password")));
    assert_eq!(gw.register("not-an-email", "long enough pw").status(), 400);

    let r = gw.login(&email, "correct horse battery");
    assert_eq!(r.status(), 200);
    let login: Value = r.json().unwrap();
    let token = login["token"].as_str().unwrap().to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let exp = login["expires_at"].as_u64().unwrap();
    assert!(exp > now + 86_000 && exp <= now + 86_401, "default ttl is a day: {exp} vs {now}");
    assert_eq!(token.split('.').count(), 3);

    let me = gw.call_ok("GET", &token, "/v1/me", None, 200);
    assert_eq!((me["id"].as_u64(), me["email"].as_str()), (Some(id), Some(email.as_str())));
    assert_eq!(usd(&me["balance"]), 0.0);
    assert!(me.get("password_hash").is_none() && !me.to_string().contains("argon2"));
    // The default ladder: 40 % below $50 of 30-day spend, next rung at $50.
    assert_eq!(me["markup"]["percent"], 40.0);
    assert_eq!(me["markup"]["source"], "tier");
    assert_eq!(usd(&me["markup"]["tier"]["min_spend_usd"]), 0.0);
    assert_eq!(usd(&me["markup"]["next_tier"]["min_spend_usd"]), 50.0);
    // Credit shows up in /me.
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "2.50"}));
    assert_eq!(usd(&gw.call_ok("GET", &token, "/api/v1/me", None, 200)["balance"]), 2.5);
    // No token, a garbage token: 401 in the contract's shape.
    let r = client().get(gw.url("/v1/me")).send().unwrap();
    assert_eq!((r.status().as_u16(), error_code(&r.json().unwrap()).as_str()), (401, "unauthorized"));
    assert_eq!(gw.call("GET", "garbage", "/v1/me", None).status(), 401);
    // An account the operator made with a password can log in too.
    let admin_email = unique_email("byadmin");
    let r = gw.admin_post("/v1/admin/accounts", json!({"email": admin_email, "password": "operator chose this"}));
    assert_eq!(r.status(), 201);
    assert_eq!(gw.login(&admin_email, "operator chose this").status(), 200);
}

#[test]
fn wrong_password_and_unknown_email_answer_alike() {
    let gw = Gateway::start_accounts(MANY_LOGINS, "");
    let (_, email, _) = gw.signed_up("alike");
    // An account without a password (made by the operator) cannot log in either.
    let nopw = unique_email("nopw");
    assert_eq!(gw.admin_post("/v1/admin/accounts", json!({"email": nopw})).status(), 201);
    let attempt = |email: &str| {
        let t = Instant::now();
        let r = gw.login(email, "wrong password!");
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        (status, body["error"].clone(), t.elapsed())
    };
    let (s1, e1, wrong) = attempt(&email);
    let (s2, e2, unknown) = attempt(&unique_email("nobody"));
    let (s3, e3, _) = attempt(&nopw);
    assert_eq!((s1, s2, s3), (401, 401, 401));
    assert_eq!(e1, e2, "same body for a wrong password and an unknown email");
    assert_eq!(e1, e3);
    // Both pay for one argon2 verification (a missing dummy check would answer in µs).
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(ratio > 0.3, "unknown email answered in {unknown:?}, wrong password in {wrong:?}");
}

#[test]
fn login_attempts_are_limited_per_address_and_per_email() {
    let gw = Gateway::start_accounts("login_attempts_per_minute = 3", "");
    let from = |ip: &str| {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let login = |ip: &str, email: &str| {
        let r = from(ip).post(gw.url("/v1/auth/login")).json(&json!({"email": email, "password": "nope nope"})).send().unwrap();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        (r.status().as_u16(), retry)
    };
    for _ in 0..3 {
        assert_eq!(login("127.0.0.1", "victim@example.com").0, 401);
    }
    let (status, retry) = login("127.0.0.1", "victim@example.com");
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| (1..=61).contains(&s)), "{retry:?}");
    // Another address, same email: the per-email limit.
    assert_eq!(login("127.0.0.2", "victim@example.com").0, 429);
    // Another address, another email: fine. The first address, another email: its limit.
    assert_eq!(login("127.0.0.3", "other@example.com").0, 401);
    assert_eq!(login("127.0.0.1", "other@example.com").0, 429);
    // Registration counts against the address too.
    let r = from("127.0.0.1").post(gw.url("/v1/auth/register")).json(&json!({"email": unique_email("r"), "password": "long enough pw"})).send().unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(error_code(&r.json().unwrap()), "rate_limit_exceeded");
}

#[test]
fn login_tokens_expire_and_resist_tampering() {
    let gw = Gateway::start_accounts("jwt_ttl_secs = 2", "");
    let (_, _, token) = gw.signed_up("expiry");
    assert_eq!(gw.call("GET", &token, "/v1/me", None).status(), 200);

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    // Another account in the payload, old signature.
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let forged_payload = payload.replacen("\"sub\":\"", "\"sub\":\"1", 1);
    let forged = format!("{}.{}.{}", parts[0], b64.encode(&forged_payload), parts[2]);
    // One character of the signature changed.
    let mut sig = parts[2].to_string();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    let bad_sig = format!("{}.{}.{sig}", parts[0], parts[1]);
    // alg "none", no signature.
    let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    for t in [&forged, &bad_sig, &none] {
        let r = gw.call("GET", t, "/v1/me", None);
        assert_eq!(r.status(), 401, "{t}");
        assert_eq!(error_code(&r.json().unwrap()), "unauthorized");
    }
    std::thread::sleep(Duration::from_millis(3_100));
    let r = gw.call("GET", &token, "/v1/me", None);
    assert_eq!(r.status(), 401);
    let body: Value = r.json().unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
}

#[test]
fn api_keys_are_refused_on_account_routes_and_jwts_for_inference() {
    let gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("split");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "1"}));
    let key = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "ci"})), 201)["key"].as_str().unwrap().to_string();
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
    for (method, path) in [("GET", "/v1/me"), ("GET", "/v1/keys"), ("POST", "/v1/keys"), ("GET", "/v1/usage"), ("GET", "/v1/keys/byok"), ("DELETE", "/v1/keys/1")] {
        let r = gw.call(method, &key, path, Some(json!({"name": "x"})));
        assert_eq!(r.status(), 401, "{method} {path}");
        let body: Value = r.json().unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("API key is not accepted"), "{body}");
    }
    let r = gw.chat(&token, hello("mock/echo-1"));
    assert_eq!(r.status(), 401);
    let body: Value = r.json().unwrap();
    assert_eq!(error_code(&body), "invalid_api_key");
    assert!(body["error"]["message"].as_str().unwrap().contains("JWT"), "{body}");
    assert_eq!(gw.call("GET", &token, "/v1/credits", None).status(), 401);
}

#[test]
fn self_service_is_off_without_a_jwt_secret() {
    let gw = Gateway::start();
    for r in [gw.register(&unique_email("off"), "long enough pw"), gw.login("a@b.c", "long enough pw")] {
        assert_eq!(r.status(), 503);
        let body: Value = r.json().unwrap();
        assert_eq!(error_code(&body), "auth_disabled");
        assert!(body["error"]["message"].as_str().unwrap().contains("JWT secret"), "{body}");
    }
    // The admin token still works on account routes, for a named account.
    let (id, _) = gw.account_with_key("1");
    let me = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/me?account_id={id}"), None, 200);
    assert_eq!(me["id"].as_u64(), Some(id));
    let r = gw.call("GET", ADMIN_TOKEN, "/v1/me", None);
    assert_eq!((r.status().as_u16(), r.json::<Value>().unwrap()["error"]["param"].clone()), (400, json!("account_id")));
    let keys = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/keys?account_id={id}"), None, 200);
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
}

#[test]
fn suspension_refuses_keys_and_logins_at_once() {
    let gw = Gateway::start_accounts(MANY_LOGINS, "");
    let (id, email, token) = gw.signed_up("suspend");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "1"}));
    let key = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "k"})), 201)["key"].as_str().unwrap().to_string();
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);

    let patched = gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"suspended": true})), 200);
    assert_eq!(patched["suspended"], true);
    let r = gw.chat(&key, hello("mock/echo-1"));
    assert_eq!(r.status(), 401);
    let body: Value = r.json().unwrap();
    assert_eq!(error_code(&body), "invalid_api_key");
    assert!(body["error"]["message"].as_str().unwrap().contains("suspended"));
    assert_eq!(gw.credits(&key)["error"]["code"], "invalid_api_key");
    assert_eq!(gw.call("GET", &token, "/v1/me", None).status(), 401);
    assert_eq!(gw.login(&email, "correct horse battery").status(), 401);

    gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"suspended": false})), 200);
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
    assert_eq!(gw.call("GET", &token, "/v1/me", None).status(), 200);
    // Bad bodies.
    for bad in [json!({"suspended": "yes"}), json!({"markup_percent": -1}), json!({"monthly_cap_usd": "abc"}), json!({"unknown": 1})] {
        assert_eq!(gw.call("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(bad.clone())).status(), 400, "{bad}");
    }
    assert_eq!(gw.call("PATCH", ADMIN_TOKEN, "/v1/admin/accounts/999999", Some(json!({"suspended": true}))).status(), 404);
    // The account's own token cannot administer.
    assert_eq!(gw.call("PATCH", &token, &format!("/v1/admin/accounts/{id}"), Some(json!({"suspended": false}))).status(), 401);
}

#[test]
fn operator_lists_and_searches_accounts() {
    let gw = Gateway::start();
    let tag = format!("findme{}", std::process::id());
    for i in 0..3 {
        let r = gw.admin_post("/v1/admin/accounts", json!({"email": format!("{tag}-{i}@Example.com")}));
        assert_eq!(r.status(), 201);
    }
    gw.admin_post("/v1/admin/accounts", json!({"email": "someone-else@example.com"}));
    let all = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/admin/accounts?q={}", tag.to_uppercase()), None, 200);
    assert_eq!(all["total"], 3);
    let emails: Vec<&str> = all["data"].as_array().unwrap().iter().map(|a| a["email"].as_str().unwrap()).collect();
    assert!(emails.iter().all(|e| e.starts_with(&tag)), "{emails:?}");
    let page = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/admin/accounts?q={tag}&limit=2&offset=1"), None, 200);
    assert_eq!((page["total"].as_u64(), page["data"].as_array().unwrap().len()), (Some(3), 2));
    assert_eq!(page["data"][0]["email"], emails[1]);
    let everyone = gw.call_ok("GET", ADMIN_TOKEN, "/v1/admin/accounts", None, 200);
    assert_eq!(everyone["total"], 4);
    assert_eq!(gw.call("GET", ADMIN_TOKEN, "/v1/admin/accounts?limit=x", None).status(), 400);
    assert_eq!(gw.call("GET", "wrong", "/v1/admin/accounts", None).status(), 401);
}

#[test]
fn every_admin_and_self_service_change_is_audited() {
    let gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("audit");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "5", "note": "welcome"}));
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "-1"}));
    gw.call_ok("PATCH", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), Some(json!({"monthly_cap_usd": "20", "markup_percent": 12.5})), 200);
    let admin_key = gw.admin_post(&format!("/v1/admin/accounts/{id}/keys"), json!({"name": "by-admin"})).json::<Value>().unwrap();
    let own = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "mine", "rate_limit_rpm": 5})), 201);
    let key_id = own["id"].as_u64().unwrap();
    gw.call_ok("PATCH", &token, &format!("/v1/keys/{key_id}"), Some(json!({"name": "renamed"})), 200);
    gw.call_ok("DELETE", &token, &format!("/v1/keys/{key_id}"), None, 200);

    let log = gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/admin/audit?account_id={id}&limit=50"), None, 200);
    let entries = log["data"].as_array().unwrap();
    let seen: Vec<(String, String)> = entries
        .iter()
        .rev()
        .map(|e| (e["actor"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string()))
        .collect();
    let me = format!("account:{id}");
    let want: Vec<(String, String)> = [
        (me.as_str(), "account.create"),
        ("admin", "credits.grant"),
        ("admin", "credits.clawback"),
        ("admin", "account.update"),
        ("admin", "key.create"),
        (me.as_str(), "key.create"),
        (me.as_str(), "key.update"),
        (me.as_str(), "key.revoke"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want);
    assert!(entries.iter().all(|e| e["at"].as_u64().unwrap() > 1_600_000_000 && e["account_id"] == id));
    let text = log.to_string();
    for secret in [own["key"].as_str().unwrap(), admin_key["key"].as_str().unwrap()] {
        assert!(!text.contains(secret), "a key secret in the audit log");
    }
    assert!(!text.contains("argon2"));
    // Admin only, limited, newest first.
    assert_eq!(gw.call("GET", &token, "/v1/admin/audit", None).status(), 401);
    let one = gw.call_ok("GET", ADMIN_TOKEN, "/v1/admin/audit?limit=1", None, 200);
    assert_eq!(one["data"][0]["action"], "key.revoke");
    assert_eq!(gw.call("GET", ADMIN_TOKEN, "/v1/admin/audit?limit=0", None).status(), 400);
}
