//! Bring-your-own-key: an account's provider keys are stored encrypted, listed by provider
//! only, and never returned or logged.

use crate::common::*;
use serde_json::{json, Value};

const BYOK_SECRET: &str = "byok-provider-secret-7f3a9c";

#[test]
fn byok_keys_are_never_returned_logged_or_stored_in_clear() {
    let mut gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("byok");
    assert!(gw.call_ok("GET", &token, "/v1/keys/byok", None, 200)["data"].as_array().unwrap().is_empty());

    let put = gw.call_ok("PUT", &token, "/v1/keys/byok/mock", Some(json!({"api_key": BYOK_SECRET})), 200);
    assert_eq!(put["provider"], "mock");
    let list = gw.call_ok("GET", &token, "/v1/keys/byok", None, 200);
    assert_eq!(list["data"], json!([{"provider": "mock"}]));
    // Replacing is allowed; unknown providers and unusable keys are not.
    gw.call_ok("PUT", &token, "/v1/keys/byok/mock", Some(json!({"api_key": BYOK_SECRET})), 200);
    assert_eq!(gw.call("PUT", &token, "/v1/keys/byok/nosuch", Some(json!({"api_key": "x"}))).status(), 404);
    for bad in [json!({"api_key": ""}), json!({"api_key": "two\r\nlines"}), json!({"api_key": 5}), json!({})] {
        assert_eq!(gw.call("PUT", &token, "/v1/keys/byok/mock", Some(bad.clone())).status(), 400, "{bad}");
    }
    // API keys are refused here too.
    let key = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "k"})), 201)["key"].as_str().unwrap().to_string();
    assert_eq!(gw.call("GET", &key, "/v1/keys/byok", None).status(), 401);

    // Survives a restart (decrypted with the same master key).
    gw.kill9();
    gw.spawn_with_env(&accounts_env());
    assert_eq!(gw.call_ok("GET", &token, "/v1/keys/byok", None, 200)["data"], json!([{"provider": "mock"}]));

    // Nowhere to be seen: answers, audit log, account views, logs, the database file.
    let views = [
        gw.call_ok("GET", &token, "/v1/me", None, 200),
        gw.call_ok("GET", ADMIN_TOKEN, &format!("/v1/admin/accounts/{id}"), None, 200),
        gw.call_ok("GET", ADMIN_TOKEN, "/v1/admin/audit?limit=100", None, 200),
        gw.call_ok("GET", &token, "/v1/keys", None, 200),
    ];
    for v in &views {
        assert!(!v.to_string().contains(BYOK_SECRET), "{v}");
    }
    let audit = &views[2]["data"];
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "byok.put" && e["detail"]["provider"] == "mock"));
    assert!(!gw.stdout().contains(BYOK_SECRET));
    assert!(!gw.stderr().contains(BYOK_SECRET));
    let db = std::fs::read(gw.dir.join("data/tollgate.redb")).unwrap();
    assert!(!db.windows(BYOK_SECRET.len()).any(|w| w == BYOK_SECRET.as_bytes()), "stored in clear");

    let del = gw.call_ok("DELETE", &token, "/v1/keys/byok/mock", None, 200);
    assert_eq!(del["registered"], false);
    assert!(gw.call_ok("GET", &token, "/v1/keys/byok", None, 200)["data"].as_array().unwrap().is_empty());
    assert_eq!(gw.call("DELETE", &token, "/v1/keys/byok/mock", None).status(), 404);
}

#[test]
fn byok_is_disabled_without_a_master_key() {
    let gw = Gateway::start_with_env("", "", &[("TOLLGATE_JWT_SECRET", JWT_SECRET)]);
    let (_, _, token) = gw.signed_up("nobyok");
    let r = gw.call("PUT", &token, "/v1/keys/byok/mock", Some(json!({"api_key": BYOK_SECRET})));
    assert_eq!(r.status(), 503);
    let body: Value = r.json().unwrap();
    assert_eq!(error_code(&body), "byok_disabled");
    assert!(body["error"]["message"].as_str().unwrap().contains("TOLLGATE_BYOK_KEY"));
    assert_eq!(gw.call("GET", &token, "/v1/keys/byok", None).status(), 503);
}

/// A request of an account with its own key for the provider goes upstream with that key.
#[test]
fn byok_key_is_sent_upstream_instead_of_the_gateways() {
    let gw = Gateway::start_accounts("", "");
    let (id, _, token) = gw.signed_up("byokup");
    gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "1"}));
    let key = gw.call_ok("POST", &token, "/v1/keys", Some(json!({"name": "k"})), 201)["key"].as_str().unwrap().to_string();
    gw.call_ok("PUT", &token, "/v1/keys/byok/mock", Some(json!({"api_key": BYOK_SECRET})), 200);
    gw.mock.clear();
    // The mock only accepts the gateway's own key, so it refuses the account's (401), which
    // shows which key went upstream without the gateway's key ever being used.
    let r = gw.chat(&key, hello("mock/echo-1"));
    let seen = gw.mock.requests();
    let auth = seen.last().unwrap()["headers"]["authorization"].as_str().unwrap().to_string();
    assert_eq!(auth, format!("Bearer {BYOK_SECRET}"));
    assert_eq!(r.status(), 401);
    assert!(!gw.stdout().contains(BYOK_SECRET) && !gw.stderr().contains(BYOK_SECRET));
}
