//! Routing: several routes per model, failover, fallbacks, health (ejection, half-open
//! recovery), deadlines, balancing, `auto`, aliases and provider preferences, against several
//! mock providers on loopback with injected faults.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

/// nano-USD from a decimal USD string.
fn nano(v: &Value) -> i64 {
    let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + frac[..9].parse::<i64>().unwrap()
}

fn remaining_nano(gw: &Gateway, key: &str) -> i64 {
    let c = gw.credits(key)["data"].clone();
    (usd(&c["remaining"]) * 1e9).round() as i64
}

fn chat_json(gw: &Gateway, key: &str, body: Value) -> (u16, HashMap<String, String>, Value) {
    let r = gw.chat(key, body);
    let status = r.status().as_u16();
    let headers = r.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let text = r.text().unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Three providers: `a` and `b` (mocks), `dead` (nothing listens on port 1).
fn three(a: &Mock, b: &Mock, routing: &str, models: &str) -> String {
    format!(
        "{}{}\n[providers.dead]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nconnect_timeout_secs = 1\n{routing}\n{models}",
        mock_provider("a", a.port, "read_timeout_secs = 5"),
        mock_provider("b", b.port, "read_timeout_secs = 5"),
    )
}

/// A model served by `a` (priority 0, $1/$2) then `b` (priority 1, $3/$6).
const PRIMARY_BACKUP: &str = r#"
[[models]]
slug = "r/pb"
provider = "a"
upstream_model = "pb-on-a"
context_length = 32768
max_output_tokens = 1000
input_per_mtok = 1.0
output_per_mtok = 2.0
[[models.routes]]
provider = "b"
upstream_model = "pb-on-b"
priority = 1
input_per_mtok = 3.0
output_per_mtok = 6.0
"#;

#[test]
fn failover_on_500_429_and_refused_is_billed_once_at_the_serving_price() {
    let b = Mock::keyed();
    let a = Mock::keyed();
    let models = format!(
        "{PRIMARY_BACKUP}
[[models]]
slug = \"r/dead-first\"
provider = \"dead\"
upstream_model = \"x\"
context_length = 32768
max_output_tokens = 1000
input_per_mtok = 1.0
output_per_mtok = 2.0
[[models.routes]]
provider = \"b\"
upstream_model = \"df-on-b\"
priority = 1
"
    );
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "[routing]\nfailure_threshold = 100", &models));
    let (_, key) = gw.account_with_key("1");

    for (fault, stream) in [(json!({"status": 500}), false), (json!({"status": 429}), false), (json!({"status": 503}), true)] {
        a.clear();
        b.clear();
        a.set_faults(fault.clone());
        let before = remaining_nano(&gw, &key);
        let mut body = hello("r/pb");
        if stream {
            body["stream"] = json!(true);
        }
        let r = gw.chat(&key, body);
        assert_eq!(r.status(), 200, "{fault}");
        assert_eq!(r.headers()["x-tollgate-provider"], "b");
        let gen = r.headers()["x-generation-id"].to_str().unwrap().to_string();
        let text = r.text().unwrap();
        if stream {
            let events = sse_data(&text);
            assert_eq!(events.last().unwrap(), "[DONE]");
            let first: Value = serde_json::from_str(&events[0]).unwrap();
            assert_eq!(first["model"], "r/pb", "the slug, whichever route served");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["model"], "r/pb");
        }
        assert_eq!(a.requests().len(), 1);
        let sent = b.requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["json"]["model"], "pb-on-b", "re-translated for the route's upstream model");
        let g = gw.generation_eventually(&key, &gen);
        assert_eq!(g["provider"], "b");
        let attempts = g["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{g}");
        assert_eq!(attempts[0]["provider"], "a");
        assert_eq!(attempts[0]["status"], fault["status"]);
        assert!(attempts[0]["error"].is_string());
        assert_eq!(attempts[1]["provider"], "b");
        assert_eq!(attempts[1]["status"], 200);
        assert!(attempts[1]["error"].is_null());
        // Exactly one charge, at b's prices ($3 / $6 per 1M = 3,000 / 6,000 nano per token).
        let expect = g["tokens_prompt"].as_i64().unwrap() * 3_000 + g["tokens_completion"].as_i64().unwrap() * 6_000;
        assert!(expect > 0);
        assert_eq!(nano(&g["total_cost_usd"]), expect, "{g}");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(before - remaining_nano(&gw, &key), expect, "charged once, at the serving route's price");
    }
    a.clear_faults();

    // A refused connection fails over too.
    b.clear();
    let (status, headers, v) = chat_json(&gw, &key, hello("r/dead-first"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-tollgate-provider"], "b");
    assert_eq!(b.requests()[0]["json"]["model"], "df-on-b");
    let g = gw.generation_eventually(&key, &headers["x-generation-id"]);
    assert_eq!(g["attempts"][0]["provider"], "dead");
    assert_eq!(g["attempts"][0]["status"], 0);
    assert!(g["attempts"][0]["error"].as_str().unwrap().contains("connect"), "{g}");

    // Every route failing: the last answer is the client's, billed nothing.
    a.set_faults(json!({"status": 500}));
    b.set_faults(json!({"status": 502}));
    let before = remaining_nano(&gw, &key);
    let (status, headers, v) = chat_json(&gw, &key, hello("r/pb"));
    assert_eq!(status, 502);
    assert_eq!(error_code(&v), "upstream_error");
    let g = gw.generation_eventually(&key, &headers["x-generation-id"]);
    assert_eq!(g["status"], "error");
    assert_eq!(g["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(nano(&g["total_cost_usd"]), 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(remaining_nano(&gw, &key), before);
}

#[test]
fn a_provider_4xx_is_not_retried() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "", PRIMARY_BACKUP));
    let (_, key) = gw.account_with_key("1");
    a.set_faults(json!({"status": 400}));
    let (status, _, v) = chat_json(&gw, &key, hello("r/pb"));
    assert_eq!(status, 400, "{v}");
    assert_eq!(a.requests().len(), 1);
    assert!(b.requests().is_empty(), "a 400 is the request's fault: no other route is tried");
}

#[test]
fn fallback_models_and_the_request_models_array() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let models = r#"
[[models]]
slug = "r/x"
provider = "a"
upstream_model = "x-up"
context_length = 32768
input_per_mtok = 1.0
output_per_mtok = 1.0
fallbacks = ["r/y"]
[[models]]
slug = "r/x2"
provider = "a"
upstream_model = "x2-up"
context_length = 32768
input_per_mtok = 1.0
output_per_mtok = 1.0
[[models]]
slug = "r/y"
provider = "b"
upstream_model = "y-up"
context_length = 32768
input_per_mtok = 2.0
output_per_mtok = 2.0
"#;
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "[routing]\nfailure_threshold = 100", models));
    let (_, key) = gw.account_with_key("1");
    a.set_faults(json!({"status": 500}));
    let (status, headers, v) = chat_json(&gw, &key, hello("r/x"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "r/y", "the response names the slug that served");
    let g = gw.generation_eventually(&key, &headers["x-generation-id"]);
    assert_eq!(g["model"], "r/y");
    assert_eq!(g["attempts"][0]["model"], "r/x");
    assert_eq!(g["attempts"][1]["model"], "r/y");

    // OpenRouter's `models` (and `provider`) never reach the provider.
    b.clear();
    let body = json!({"model": "r/x2", "models": ["r/y"], "provider": {"sort": "price"},
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, v) = chat_json(&gw, &key, body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "r/y");
    let sent = &b.requests()[0]["json"];
    assert_eq!(sent["model"], "y-up");
    assert!(sent.get("models").is_none() && sent.get("provider").is_none(), "{sent}");
    // `models` alone names the model.
    let (status, _, v) = chat_json(&gw, &key, json!({"models": ["r/y"], "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "r/y");
    // An unknown slug in `models` is the request's mistake.
    let (status, _, v) = chat_json(&gw, &key, json!({"model": "r/y", "models": ["nope/nope"], "messages": []}));
    assert_eq!(status, 400, "{v}");
}

/// Two routes of equal priority on `a` and `b`.
fn pair(slug: &str, extra: &str, a_extra: &str, b_extra: &str) -> String {
    format!(
        r#"
[[models]]
slug = "{slug}"
provider = "a"
upstream_model = "{slug}-on-a"
context_length = 32768
max_output_tokens = 1000
input_per_mtok = 1.0
output_per_mtok = 1.0
{extra}
{a_extra}
[[models.routes]]
provider = "b"
upstream_model = "{slug}-on-b"
{b_extra}
"#
    )
}

#[test]
fn a_failing_route_is_ejected_then_a_half_open_probe_restores_it() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let routing = "[routing]\nfailure_threshold = 2\nfailure_window_secs = 30\nejection_secs = 1\nmax_ejection_secs = 10";
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, routing, &pair("r/lb", "", "", "")));
    let (_, key) = gw.account_with_key("5");
    let c = client();
    let send = || {
        let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(&key).json(&hello("r/lb")).send().unwrap();
        assert_eq!(r.status(), 200, "every request is served while a route fails");
        r.headers()["x-tollgate-provider"].to_str().unwrap().to_string()
    };
    a.set_faults(json!({"status": 500}));
    let mut n = 0;
    while gw.route_state("r/lb", "a")["state"] != "ejected" {
        send();
        n += 1;
        assert!(n < 60, "a was never ejected");
    }
    assert_eq!(a.requests().len(), 2, "ejected after exactly failure_threshold failures");
    let m = gw.metrics();
    assert!(m.contains(r#"tollgate_route_ejections_total{provider="a",upstream_model="r/lb-on-a"} 1"#), "{m}");
    assert!(m.contains(r#"tollgate_route_state{provider="a",state="ejected",upstream_model="r/lb-on-a"} 1"#), "{m}");

    // Ejected: nothing goes to a.
    a.clear();
    for _ in 0..10 {
        assert_eq!(send(), "b");
    }
    assert!(a.requests().is_empty());

    // Cool-down over, still failing: the one probe fails (the request still succeeds on b)
    // and the next ejection lasts twice as long.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(gw.route_state("r/lb", "a")["state"], "half_open");
    assert_eq!(send(), "b");
    assert_eq!(a.requests().len(), 1, "exactly one probe");
    let s = gw.route_state("r/lb", "a");
    assert_eq!(s["state"], "ejected");
    assert!(s["ejected_for_ms"].as_u64().unwrap() > 1500, "{s}");
    assert_eq!(s["ejections"], 2);

    // Fixed: after the cool-down the probe succeeds and the route is healthy again.
    a.clear_faults();
    a.clear();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(send(), "a", "the half-open probe goes first");
    assert_eq!(gw.route_state("r/lb", "a")["state"], "healthy");
    let served: Vec<String> = (0..30).map(|_| send()).collect();
    assert!(served.iter().any(|p| p == "a") && served.iter().any(|p| p == "b"), "{served:?}");
    let m = gw.metrics();
    assert!(m.contains(r#"tollgate_route_state{provider="a",state="healthy",upstream_model="r/lb-on-a"} 1"#), "{m}");
}

#[test]
fn admin_routes_needs_the_admin_token() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "", PRIMARY_BACKUP));
    let r = client().get(gw.url("/v1/admin/routes")).send().unwrap();
    assert_eq!(r.status(), 401);
    let v = gw.admin_get("/v1/admin/routes");
    let routes = v["data"][0]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["provider"], "a");
    assert_eq!(routes[1]["priority"], 1);
    assert_eq!(routes[1]["input_per_mtok"], 3.0);
    assert_eq!(routes[0]["state"], "healthy");
}

#[test]
fn deadlines_bound_a_hung_or_slow_upstream() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    // r/deadline: a first route that gives up on the first byte after 0.5 s, a second that
    // would wait 10 s, and a 1.5 s deadline for the whole request.
    let models = format!(
        "{}{}{}{}",
        pair("r/slow", "first_byte_timeout_secs = 0.5", "", "priority = 1"),
        mock_provider("afast", a.port, "first_byte_timeout_secs = 0.5"),
        mock_provider("bslow", b.port, "first_byte_timeout_secs = 10"),
        r#"
[[models]]
slug = "r/deadline"
provider = "afast"
upstream_model = "d-on-a"
context_length = 32768
input_per_mtok = 1.0
output_per_mtok = 1.0
total_timeout_secs = 1.5
[[models.routes]]
provider = "bslow"
upstream_model = "d-on-b"
priority = 1
"#
    );
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "[routing]\nfailure_threshold = 100", &models));
    let (_, key) = gw.account_with_key("1");

    // A slow first byte, then a hang: each moves to the next route after first_byte_timeout.
    for fault in [json!({"delay_ms": 3000}), json!({"hang": true})] {
        a.set_faults(fault.clone());
        let t = Instant::now();
        let (status, headers, v) = chat_json(&gw, &key, hello("r/slow"));
        let took = t.elapsed();
        assert_eq!(status, 200, "{fault}: {v}");
        assert_eq!(headers["x-tollgate-provider"], "b");
        assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(2500), "{fault}: {took:?}");
        let g = gw.generation_eventually(&key, &headers["x-generation-id"]);
        assert_eq!(g["attempts"][0]["status"], 0);
        assert!(g["attempts"][0]["error"].as_str().unwrap().contains("in time"), "{g}");
    }

    // Both hang: the request's deadline (1.5 s) ends it with 504, failover included (without
    // it the second route would hold the client 10 s more).
    b.set_faults(json!({"hang": true}));
    let t = Instant::now();
    let (status, headers, v) = chat_json(&gw, &key, hello("r/deadline"));
    let took = t.elapsed();
    assert_eq!(status, 504, "{v}");
    assert_eq!(error_code(&v), "upstream_timeout");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_millis(3500), "deadline 1.5 s, took {took:?}");
    let g = gw.generation_eventually(&key, &headers["x-generation-id"]);
    let attempts = g["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{g}");
    assert_eq!(attempts[0]["provider"], "afast");
    assert_eq!(attempts[1]["provider"], "bslow");
    assert_eq!(nano(&g["total_cost_usd"]), 0);
}

#[test]
fn nothing_is_retried_once_the_response_started() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let models = format!(
        "{}{}",
        pair("r/cut", "", "", "priority = 1"),
        pair("r/stall", "idle_timeout_secs = 0.5", "", "priority = 1")
    );
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "[routing]\nfailure_threshold = 100", &models));
    let (_, key) = gw.account_with_key("1");
    let stream = |slug: &str| {
        let mut body = hello(slug);
        body["stream"] = json!(true);
        client().post(gw.url("/v1/chat/completions")).bearer_auth(&key).header("x-mock-words", "20").json(&body).send().unwrap()
    };

    // Cut mid-stream: the client gets what was produced and an error event; no retry.
    a.set_faults(json!({"cut_after": 2}));
    let r = stream("r/cut");
    assert_eq!(r.status(), 200);
    let gen = r.headers()["x-generation-id"].to_str().unwrap().to_string();
    let events = sse_data(&r.text().unwrap());
    assert!(events.len() >= 2, "{events:?}");
    assert!(events.last().unwrap().contains("\"error\""), "{events:?}");
    assert!(b.requests().is_empty(), "nothing is retried after the first byte");
    let g = gw.generation_eventually(&key, &gen);
    assert_eq!(g["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(g["usage_estimated"], true);
    assert!(nano(&g["total_cost_usd"]) > 0, "what was produced is billed: {g}");

    // A stall between chunks: the idle timeout ends it with an error event; no retry.
    a.set_faults(json!({"chunk_delay_ms": 3000}));
    let t = Instant::now();
    let r = stream("r/stall");
    assert_eq!(r.status(), 200);
    let events = sse_data(&r.text().unwrap());
    assert!(t.elapsed() < Duration::from_millis(2800), "{:?}", t.elapsed());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{events:?}");
    assert!(b.requests().is_empty());
}

#[test]
fn a_client_that_goes_away_mid_stream_cancels_and_pays_for_what_was_produced() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "", PRIMARY_BACKUP));
    let (_, key) = gw.account_with_key("1");
    let body = json!({"model": "r/pb", "stream": true, "messages": [{"role": "user", "content": "Hello there"}]}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nx-mock-words: 40\r\nx-mock-chunk-delay-ms: 100\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut gen = String::new();
    let mut events = 0;
    let t = Instant::now();
    let mut line = String::new();
    while events < 3 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended early");
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("x-generation-id") {
                gen = value.trim().to_string();
            }
        }
        if line.starts_with("data:") {
            events += 1;
        }
    }
    drop(reader);
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    let g = gw.generation_eventually(&key, &gen);
    // 40 words at 100 ms each would take 4 s; the upstream is abandoned at once.
    assert!(g["latency_ms"].as_u64().unwrap() < t.elapsed().as_millis() as u64 + 1000, "{g}");
    assert!(g["latency_ms"].as_u64().unwrap() < 2500, "{g}");
    assert_eq!(g["usage_estimated"], true, "{g}");
    let completion = g["tokens_completion"].as_u64().unwrap();
    assert!(completion > 0 && completion < 40, "{g}");
    assert!(nano(&g["total_cost_usd"]) > 0, "{g}");
}

#[test]
fn weighted_balancing_follows_the_weights_and_least_outstanding_avoids_the_busy_route() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let models = format!(
        "{}{}",
        pair("r/w", "", "weight = 3", "weight = 1"),
        pair("r/lor", "balance = \"least_outstanding\"", "", "")
    );
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "", &models));
    let (_, key) = gw.account_with_key("10");
    let c = client();
    let mut count: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(&key).json(&hello("r/w")).send().unwrap();
        assert_eq!(r.status(), 200);
        *count.entry(r.headers()["x-tollgate-provider"].to_str().unwrap().to_string()).or_default() += 1;
        r.bytes().unwrap();
    }
    let on_a = count.get("a").copied().unwrap_or(0);
    // Expected 750 (weights 3:1); the standard deviation is about 14.
    assert!((690..=810).contains(&on_a), "{count:?}");
    let v = gw.admin_get("/v1/admin/routes");
    let m = v["data"].as_array().unwrap().iter().find(|m| m["model"] == "r/w").unwrap().clone();
    assert_eq!(m["routes"][0]["attempts"].as_u64().unwrap(), on_a as u64);

    // Least outstanding: `a` is slow, so concurrent requests mostly find it busy.
    a.set_faults(json!({"delay_ms": 300}));
    let counts = std::sync::Mutex::new(HashMap::<String, u32>::new());
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                let c = client();
                for _ in 0..10 {
                    let r = c.post(gw.url("/v1/chat/completions")).bearer_auth(&key).json(&hello("r/lor")).send().unwrap();
                    assert_eq!(r.status(), 200);
                    let p = r.headers()["x-tollgate-provider"].to_str().unwrap().to_string();
                    *counts.lock().unwrap().entry(p).or_default() += 1;
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    assert!(counts.get("a").copied().unwrap_or(0) < 18, "the busy route gets few: {counts:?}");
}

fn model_on(slug: &str, provider: &str, price: f64, context: u64, caps: &str, extra: &str) -> String {
    format!(
        r#"
[[models]]
slug = "{slug}"
provider = "{provider}"
upstream_model = "{slug}-up"
context_length = {context}
max_output_tokens = 500
input_per_mtok = {price}
output_per_mtok = {price}
capabilities = [{caps}]
{extra}
"#
    )
}

#[test]
fn auto_picks_the_cheapest_model_that_fits_and_can_do_what_the_request_uses() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let models = [
        model_on("r/cheap", "a", 0.1, 1000, "", ""),
        model_on("r/tools", "a", 0.5, 100000, "\"tools\"", ""),
        model_on("r/all", "a", 5.0, 100000, "\"tools\", \"vision\", \"json\"", ""),
        model_on("r/not-auto", "a", 0.01, 100000, "\"tools\", \"vision\", \"json\"", "auto = false"),
        model_on("r/elsewhere", "b", 0.2, 1000, "", ""),
    ]
    .concat();
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "", &models));
    let (_, key) = gw.account_with_key("5");
    let ask = |extra: Value| {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, _, v) = chat_json(&gw, &key, body);
        assert_eq!(status, 200, "{v}");
        v["model"].as_str().unwrap().to_string()
    };
    assert_eq!(ask(json!({})), "r/cheap");
    assert_eq!(ask(json!({"model": "tollgate/auto"})), "r/cheap");
    assert_eq!(ask(json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})), "r/tools");
    assert_eq!(
        ask(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})),
        "r/all"
    );
    assert_eq!(ask(json!({"response_format": {"type": "json_object"}})), "r/all");
    // About 1,500 prompt tokens: more than r/cheap's (and r/elsewhere's) context of 1,000.
    let long = "lorem ipsum ".repeat(500);
    assert_eq!(ask(json!({"messages": [{"role": "user", "content": long}]})), "r/tools");
    // max_tokens counts too.
    assert_eq!(ask(json!({"max_tokens": 990})), "r/tools");
    assert_eq!(a.requests().last().unwrap()["json"]["model"], "r/tools-up");
    // The cheapest fails: the next cheapest that fits answers.
    a.set_faults(json!({"status": 500}));
    assert_eq!(ask(json!({})), "r/elsewhere");
}

#[test]
fn aliases_try_their_models_in_order() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let models = format!(
        "{}{}\n[[aliases]]\nname = \"tollgate/smart-code\"\nmodels = [\"r/first\", \"r/second\"]\n",
        model_on("r/first", "a", 1.0, 32768, "", ""),
        model_on("r/second", "b", 1.0, 32768, "", "")
    );
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "[routing]\nfailure_threshold = 100", &models));
    let (_, key) = gw.account_with_key("1");
    let (status, _, v) = chat_json(&gw, &key, hello("tollgate/smart-code"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "r/first");
    a.set_faults(json!({"status": 503}));
    let (status, headers, v) = chat_json(&gw, &key, hello("tollgate/smart-code"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "r/second");
    let g = gw.generation_eventually(&key, &headers["x-generation-id"]);
    assert_eq!(g["model"], "r/second");
    assert_eq!(g["attempts"][0]["model"], "r/first");
}

#[test]
fn provider_preferences_order_filter_sort_and_pin_routes() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let models = pair("r/pp", "", "", "priority = 1\ninput_per_mtok = 0.5\noutput_per_mtok = 0.5");
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "[routing]\nfailure_threshold = 100", &models));
    let (_, key) = gw.account_with_key("1");
    let with = |provider: Value| {
        let body = json!({"model": "r/pp", "provider": provider, "messages": [{"role": "user", "content": "hi"}]});
        let (status, headers, v) = chat_json(&gw, &key, body);
        (status, headers.get("x-tollgate-provider").cloned().unwrap_or_default(), v)
    };
    let served = |provider: Value| {
        let (status, p, v) = with(provider.clone());
        assert_eq!(status, 200, "{provider}: {v}");
        p
    };
    assert_eq!(served(json!({})), "a");
    assert_eq!(served(json!({"order": ["b", "a"]})), "b");
    assert_eq!(served(json!({"only": ["b"]})), "b");
    assert_eq!(served(json!({"ignore": ["a"]})), "b");
    assert_eq!(served(json!({"sort": "price"})), "b", "b is the cheaper route");
    assert!(b.requests().iter().all(|r| r["json"].get("provider").is_none()), "never sent upstream");

    // a fails: by default the request moves on, pinned it does not.
    a.set_faults(json!({"status": 500}));
    assert_eq!(served(json!({})), "b");
    b.clear();
    for pinned in [json!({"only": ["a"]}), json!({"order": ["a"], "allow_fallbacks": false}), json!({"allow_fallbacks": false})] {
        let (status, _, v) = with(pinned.clone());
        assert_eq!(status, 502, "{pinned}: {v}");
    }
    assert!(b.requests().is_empty());
    a.clear_faults();

    // Latency: measured per route; a is slow.
    a.set_faults(json!({"delay_ms": 500}));
    served(json!({"order": ["a"]}));
    served(json!({"order": ["b"]}));
    a.clear_faults();
    assert_eq!(served(json!({"sort": "latency"})), "b", "{}", gw.admin_get("/v1/admin/routes"));

    // Malformed preferences are the request's mistake.
    for bad in [json!({"order": ["a"], "require_parameters": true}), json!({"sort": "cheapest"}), json!({"only": "a"}), json!({"only": ["nope"]})] {
        let (status, _, v) = with(bad.clone());
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["param"], "provider", "{v}");
    }
}

#[test]
fn route_health_survives_a_config_reload() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    let routing = "[routing]\nfailure_threshold = 1\nejection_secs = 60\nmax_ejection_secs = 120";
    let body = three(&a, &b, routing, PRIMARY_BACKUP);
    let gw = Gateway::start_routed(Mock::keyed(), &body);
    let (_, key) = gw.account_with_key("1");
    a.set_faults(json!({"status": 500}));
    let (status, _, _) = chat_json(&gw, &key, hello("r/pb"));
    assert_eq!(status, 200);
    assert_eq!(gw.route_state("r/pb", "a")["state"], "ejected");

    // A reload that leaves the route alone keeps its state.
    let more = format!("{body}{}", model_on("r/new", "b", 1.0, 1000, "", ""));
    gw.reload_routed(&more, "r/new");
    let s = gw.route_state("r/pb", "a");
    assert_eq!(s["state"], "ejected", "{s}");
    assert_eq!(s["ejections"], 1);
    a.clear();
    let (status, headers, _) = chat_json(&gw, &key, hello("r/pb"));
    assert_eq!((status, headers["x-tollgate-provider"].as_str()), (200, "b"));
    assert!(a.requests().is_empty(), "still ejected after the reload");

    // A route that changed (another upstream model) starts healthy.
    let changed = more.replace("upstream_model = \"pb-on-a\"", "upstream_model = \"pb-on-a-v2\"")
        + &model_on("r/newer", "b", 1.0, 1000, "", "");
    gw.reload_routed(&changed, "r/newer");
    let s = gw.route_state("r/pb", "a");
    assert_eq!(s["state"], "healthy", "{s}");
    assert_eq!(s["upstream_model"], "pb-on-a-v2");
}

#[test]
fn the_reservation_covers_the_dearest_route() {
    let a = Mock::keyed();
    let b = Mock::keyed();
    // One route at $1, its backup at $1,000 per 1M tokens; max_output_tokens 1000.
    let models = pair("r/dear", "", "", "priority = 1\ninput_per_mtok = 1000.0\noutput_per_mtok = 1000.0");
    let gw = Gateway::start_routed(Mock::keyed(), &three(&a, &b, "", &models));
    // Enough for the cheap route's worst case (~1,100 tokens × $1/1M ≈ $0.0011), not the dear one's (≈ $1.1).
    let (_, key) = gw.account_with_key("0.01");
    let (status, _, v) = chat_json(&gw, &key, hello("r/dear"));
    assert_eq!(status, 402, "{v}");
    assert!(a.requests().is_empty());
    let (_, key) = gw.account_with_key("2");
    let (status, _, _) = chat_json(&gw, &key, hello("r/dear"));
    assert_eq!(status, 200);
}
