//! Routes answered by the gateway itself.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn models_catalog_is_public_and_filtered_by_platform() {
    let gw = Gateway::start();
    for base in ["/v1", "/api/v1"] {
        let v: Value = client().get(gw.url(&format!("{base}/models"))).send().unwrap().json().unwrap();
        let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert!(ids.contains(&"mock/echo-1") && ids.contains(&"mock/big"), "{ids:?}");
        assert!(!ids.contains(&"off/model"), "a disabled provider's models are hidden");
    }
    let only = |platform: &str| -> Vec<String> {
        let v: Value = client().get(gw.url("/v1/models")).header("X-Platform", platform).send().unwrap().json().unwrap();
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    assert!(only("intl").contains(&"mock/echo-1".to_string()) && !only("intl").contains(&"mock/big".to_string()));
    assert!(only("cn").contains(&"mock/big".to_string()) && !only("cn").contains(&"mock/echo-1".to_string()));
    let r = client().get(gw.url("/v1/models")).header("X-Platform", "mars").send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.json().unwrap()), "invalid_request");
}

#[test]
fn one_model_with_pricing_and_context() {
    let gw = Gateway::start();
    let v: Value = client().get(gw.url("/v1/models/mock/echo-1")).send().unwrap().json().unwrap();
    assert_eq!(v["id"], "mock/echo-1");
    assert_eq!(v["context_length"], 32768);
    assert_eq!(v["pricing"]["prompt"], "0.000001");
    assert_eq!(v["pricing"]["completion"], "0.000002");
    // The slash of a slug sent encoded, as openai-node's `models.retrieve` does.
    let v: Value = client().get(gw.url("/api/v1/models/mock%2Fecho-1")).send().unwrap().json().unwrap();
    assert_eq!(v["id"], "mock/echo-1");
    let r = client().get(gw.url("/api/v1/models/nope/x")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.json().unwrap()), "model_not_found");
}

#[test]
fn health_and_readiness() {
    let gw = Gateway::start();
    assert_eq!(client().get(gw.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(client().get(gw.url("/readyz")).send().unwrap().status(), 200);
}

#[test]
fn admin_accounts_credits_and_keys() {
    let gw = Gateway::start();
    let r = gw.admin_post("/api/v1/admin/accounts", json!({"email": "ops@example.com", "password": "pw"}));
    assert_eq!(r.status(), 201);
    let acct: Value = r.json().unwrap();
    assert_eq!(acct["email"], "ops@example.com");
    let id = acct["id"].as_u64().unwrap();
    let r = gw.admin_post("/v1/admin/accounts", json!({"email": "ops@example.com"}));
    assert_eq!(r.status(), 409, "duplicate email");
    let r = gw.admin_post("/v1/admin/accounts", json!({"email": 5}));
    assert_eq!(r.status(), 400);

    let r = gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "12.3456789012", "note": "x"}));
    assert_eq!(r.status(), 400, "more than 9 decimals is not an exact nano amount");
    let r = gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "12.5"}));
    assert_eq!(r.status(), 200);
    assert_eq!(usd(&r.json::<Value>().unwrap()["balance"]), 12.5);
    let r = gw.admin_post(&format!("/v1/admin/accounts/{id}/credits"), json!({"amount_usd": "abc"}));
    assert_eq!(r.status(), 400);
    let r = gw.admin_post("/v1/admin/accounts/999999/credits", json!({"amount_usd": "1"}));
    assert_eq!(r.status(), 404);

    let r = gw.admin_post(&format!("/v1/admin/accounts/{id}/keys"), json!({"name": "ci", "rate_limit_rpm": 60, "daily_cap_usd": 5}));
    assert_eq!(r.status(), 201);
    let k: Value = r.json().unwrap();
    let secret = k["key"].as_str().unwrap();
    assert!(secret.starts_with("sk-tg-") && secret.len() == "sk-tg-".len() + 43, "{secret}");

    let v: Value = client().get(gw.url(&format!("/v1/admin/accounts/{id}"))).bearer_auth(ADMIN_TOKEN).send().unwrap().json().unwrap();
    assert_eq!(usd(&v["balance"]), 12.5);
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let shown = keys[0].to_string();
    assert!(!shown.contains(secret), "keys are redacted");
    assert!(keys[0]["redacted"].as_str().unwrap().starts_with("sk-tg-"));
    // The new key works at once.
    assert_eq!(gw.chat(secret, hello("mock/echo-1")).status(), 200);
}

#[test]
fn generation_lookup_is_scoped_to_the_account() {
    let gw = Gateway::start();
    let (_, a) = gw.account_with_key("1");
    let (_, b) = gw.account_with_key("1");
    let r = gw.chat(&a, hello("mock/echo-1"));
    let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let g = gw.generation_eventually(&a, &gen_id);
    for field in ["id", "model", "provider", "tokens_prompt", "tokens_completion", "total_cost", "latency_ms", "status", "created_at"] {
        assert!(g.get(field).is_some(), "missing {field}");
    }
    assert_eq!(gw.generation(&b, &gen_id).status(), 404);
    let r = client().get(gw.url("/v1/generation")).bearer_auth(&a).send().unwrap();
    assert_eq!(r.status(), 400);
    let r = client().get(gw.url(&format!("/v1/generation?id={gen_id}"))).send().unwrap();
    assert_eq!(r.status(), 401);
}

/// The client sees the gateway's id; the provider's own is kept in the record as
/// `upstream_id` (OpenRouter's name), for each wire format, whole and streamed.
#[test]
fn a_generation_keeps_the_providers_own_id() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("5");
    for (model, prefix) in [("mock/echo-1", "chatcmpl-mock-"), ("anthropic/claude-test", "msg_mock_"), ("google/gemini-test", "mock-")] {
        for stream in [false, true] {
            let mut body = hello(model);
            body["stream"] = json!(stream);
            let r = gw.chat(&key, body);
            assert_eq!(r.status(), 200, "{model} stream={stream}");
            let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
            let text = r.text().unwrap();
            assert!(text.contains(&format!("\"chatcmpl-{gen_id}\"")), "{model} stream={stream}: {text}");
            assert!(!text.contains(prefix), "{model} stream={stream}: the provider's id reached the client: {text}");
            let g = gw.generation_eventually(&key, &gen_id);
            let upstream = g["upstream_id"].as_str().unwrap_or_else(|| panic!("{model} stream={stream}: no upstream_id in {g}"));
            assert!(upstream.starts_with(prefix) && upstream.len() > prefix.len(), "{model} stream={stream}: {upstream}");
        }
    }
}

#[test]
fn a_generation_is_found_as_soon_as_its_answer_arrived() {
    // Records are group-committed ~50 ms after the answer; a lookup that misses flushes the
    // writer, so clients need not poll. (Three tries 2 ms apart only cover the moment between
    // the answer going out and the logging phase that submits the record.)
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    for _ in 0..5 {
        let r = gw.chat(&key, hello("mock/echo-1"));
        assert_eq!(r.status(), 200);
        let gen_id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
        let body: Value = r.json().unwrap();
        let body_id = body["id"].as_str().unwrap().to_string();
        let started = Instant::now();
        let mut found = None;
        for _ in 0..3 {
            let r = gw.generation(&key, &gen_id);
            if r.status() == 200 {
                found = Some(r.json::<Value>().unwrap());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let g = found.unwrap_or_else(|| panic!("generation {gen_id} not found within {:?}", started.elapsed()));
        assert_eq!(g["data"]["id"], gen_id.as_str());
        let r = gw.generation(&key, &body_id);
        assert_eq!(r.status(), 200, "by the body's id {body_id}");
    }
}

#[test]
fn metrics_are_exported() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
    let series = [
        "tollgate_requests_total",
        "tollgate_tokens_total",
        "tollgate_cost_nano_usd_total",
        "tollgate_upstream_latency_seconds",
        "tollgate_time_to_first_token_seconds",
        "tollgate_active_streams",
        "tollgate_config_reloads_total",
        r#"model="mock/echo-1""#,
    ];
    // A request is counted in Pingora's logging phase, which runs after the client has its
    // answer: wait for it (briefly) rather than race it.
    let start = std::time::Instant::now();
    let mut m = gw.metrics();
    while series.iter().any(|s| !m.contains(s)) && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        m = gw.metrics();
    }
    for s in series {
        assert!(m.contains(s), "{s} missing from /metrics");
    }
}

#[test]
fn access_log_has_one_json_line_per_request_without_secrets() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = gw.stdout();
    let lines: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let chat = lines.iter().find(|l| l["path"] == "/v1/chat/completions").expect("a chat line");
    for field in [
        "ts", "request_id", "generation_id", "method", "status", "route", "model", "provider", "key_id", "latency_ms",
        "overhead_us", "stream", "tokens_prompt", "tokens_completion", "usage_estimated", "cost_usd", "error",
    ] {
        assert!(chat.get(field).is_some(), "missing {field}: {chat}");
    }
    assert_eq!((chat["status"].as_u64(), chat["stream"].as_bool(), chat["error"].is_null()), (Some(200), Some(false), true));
    assert!(chat["generation_id"].as_str().is_some_and(|g| g.starts_with("gen-")), "{chat}");
    assert!(!out.contains(&key) && !out.contains("Hello there") && !out.contains(PROVIDER_KEY));
}

#[test]
fn a_keys_platform_and_allowed_models_shape_its_catalog_and_its_access() {
    let gw = Gateway::start();
    let (account, _) = gw.account_with_key("5");
    let r = gw.admin_post(
        &format!("/v1/admin/accounts/{account}/keys"),
        json!({"name": "cn-only", "platform": "cn", "allowed_models": ["mock/*"]}),
    );
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let key = r.json::<Value>().unwrap()["key"].as_str().unwrap().to_string();
    let v: Value = client().get(gw.url("/v1/models")).bearer_auth(&key).send().unwrap().json().unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"mock/big"), "{ids:?}");
    assert!(!ids.contains(&"mock/echo-1"), "an intl-only model is outside a cn key's catalog: {ids:?}");
    assert!(!ids.iter().any(|i| i.starts_with("anthropic/")), "{ids:?}");
    let r = gw.chat(&key, hello("mock/echo-1"));
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.json().unwrap()), "model_not_allowed");
    assert_eq!(gw.chat(&key, hello("mock/big")).status(), 200);
}
