//! Hot reload: a good file is swapped in, a bad one refused and counted.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn model_ids(gw: &Gateway) -> Vec<String> {
    let v: Value = client().get(gw.url("/v1/models")).send().unwrap().json().unwrap();
    v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const NEW_MODEL: &str = r#"
[[models]]
slug = "mock/new"
provider = "mock"
upstream_model = "new-upstream"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1
"#;

#[test]
fn a_changed_file_is_picked_up_and_a_bad_one_refused() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(!model_ids(&gw).contains(&"mock/new".to_string()));

    std::fs::write(&gw.config_path, format!("{original}{NEW_MODEL}")).unwrap();
    wait_until("the new model", || model_ids(&gw).contains(&"mock/new".to_string()));
    assert_eq!(gw.chat(&key, hello("mock/new")).status(), 200);

    // A broken file: refused whole, the running config stays, the failure is counted.
    std::fs::write(&gw.config_path, format!("{original}{NEW_MODEL}\n[[models]]\nslug = 3\n")).unwrap();
    wait_until("the failure metric", || gw.metrics().contains(r#"tollgate_config_reloads_total{result="failure"} 1"#));
    assert!(model_ids(&gw).contains(&"mock/new".to_string()));
    assert_eq!(gw.chat(&key, hello("mock/new")).status(), 200);
    assert!(gw.stderr().contains("refused"));
}

#[test]
fn sighup_reloads() {
    let gw = Gateway::start();
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    // Same mtime second is fine: SIGHUP forces the reload regardless.
    std::fs::write(&gw.config_path, format!("{original}{NEW_MODEL}")).unwrap();
    gw.signal("HUP");
    wait_until("the new model after SIGHUP", || model_ids(&gw).contains(&"mock/new".to_string()));
    assert!(gw.proc.is_some());
}

#[test]
fn a_request_in_flight_keeps_its_config() {
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .header("x-mock-delay-ms", "800")
                .json(&hello("mock/echo-1"))
                .send()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(200));
        // Remove the model while the request waits on the upstream.
        let without = original.replace("slug = \"mock/echo-1\"", "slug = \"mock/renamed\"");
        std::fs::write(&gw.config_path, without).unwrap();
        let r = h.join().unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().unwrap();
        assert_eq!(body["model"], "mock/echo-1");
    });
    wait_until("the rename", || model_ids(&gw).contains(&"mock/renamed".to_string()));
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 404);
}

/// Config reloads under load lose nothing: clients hammer the gateway (keep-alive and new
/// connections) while the file is rewritten again and again, valid and broken versions in
/// turn. Every request succeeds; each version is either swapped in or refused whole.
#[test]
fn reloads_under_load_lose_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let gw = Gateway::start();
    let (_, key) = gw.account_with_key("100");
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let broken = format!("{original}\n[[models]]\nslug = 3\n");
    let valid = format!("{original}{NEW_MODEL}");
    std::thread::scope(|s| {
        for worker in 0..4 {
            let (gw, key, stop, ok, failures) = (&gw, &key, &stop, &ok, &failures);
            s.spawn(move || {
                // Two workers reuse one keep-alive client; two open a new connection each time.
                let shared = client();
                while !stop.load(Ordering::Relaxed) {
                    let http = if worker % 2 == 0 { shared.clone() } else { client() };
                    let stream = worker == 3;
                    let body = json!({"model": "mock/echo-1", "stream": stream, "messages": [{"role": "user", "content": "Hello there"}]});
                    match http.post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().and_then(|r| Ok((r.status(), r.text()?))) {
                        Ok((status, text)) if status == 200 && (text.contains("\"choices\"") || text.contains("[DONE]")) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, text)) => failures.lock().unwrap().push(format!("{status}: {text}")),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            });
        }
        for i in 0..24 {
            let text = match i % 3 {
                0 => &valid,
                1 => &broken,
                _ => &original,
            };
            std::fs::write(&gw.config_path, text).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    let metrics = gw.metrics();
    eprintln!("reloads under load: {} requests OK, {} failed", ok.load(Ordering::Relaxed), failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(metrics.contains(r#"tollgate_config_reloads_total{result="failure"}"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_config_reloads_total{result="success"}"#), "{metrics}");
}
