//! The CLI and the process: check, graceful drain on SIGTERM.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn check_accepts_a_good_config_and_lists_every_error_of_a_bad_one() {
    let dir = scratch_dir("check");
    let good = dir.join("good.toml");
    std::fs::write(&good, config_for(8080, 9464, &dir.join("data"), 9999, "")).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let bad = dir.join("bad.toml");
    let text = config_for(8080, 9464, &dir.join("data"), 9999, "")
        .replace("input_per_mtok = 1.00", "input_per_mtok = -1.00")
        .replace("provider = \"dead\"", "provider = \"ghost\"");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models[0].input_per_mtok"), "{err}");
    assert!(err.contains("models[9].provider"), "{err}");
    assert!(err.contains("unknown provider 'ghost'"), "{err}");

    let out = Command::new(BIN).args(["check", "--config"]).arg(dir.join("missing.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let mut gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .header("x-mock-delay-ms", "1000")
                .json(&hello("mock/echo-1"))
                .send()
                .map(|r| r.status().as_u16())
        });
        std::thread::sleep(Duration::from_millis(300));
        gw.signal("TERM");
        assert_eq!(h.join().unwrap().unwrap(), 200, "the request in flight finished");
    });
    // It exits soon after the drain, well before the 10 s grace period.
    let status = gw.proc.as_mut().unwrap().wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

/// SIGTERM during a stream: the stream completes, the process exits once it is done (well
/// inside the 10 s grace period), and the charge is on disk.
#[test]
fn sigterm_during_a_stream_finishes_it_and_records_its_charge() {
    let mut gw = Gateway::start();
    let (_, key) = gw.account_with_key("1");
    let (id, body) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .header("x-mock-words", "12")
                .header("x-mock-chunk-delay-ms", "120")
                .json(&serde_json::json!({"model": "mock/echo-1", "stream": true, "messages": [{"role": "user", "content": "Hello there"}]}))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            let id = r.headers()["x-generation-id"].to_str().unwrap().to_string();
            (id, r.text().unwrap())
        });
        std::thread::sleep(Duration::from_millis(400));
        gw.signal("TERM");
        h.join().unwrap()
    });
    assert!(body.contains("[DONE]"), "the stream completed: {body}");
    let status = gw.proc.as_mut().unwrap().wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    gw.proc = None;
    // What a restart reads back from the ledger: the stream's charge, exactly once.
    gw.spawn();
    let g = gw.generation_eventually(&key, &id);
    assert!(g["streamed"] == true, "{g}");
    let cost = usd(&g["total_cost"]);
    assert!(cost > 0.0, "{g}");
    assert!((usd(&gw.credits(&key)["data"]["total_usage"]) - cost).abs() < 1e-12);
}
