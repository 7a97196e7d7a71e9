//! The CLI and the process: check, graceful drain on SIGTERM.

use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};

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
    let start = Instant::now();
    let child = &mut gw.proc.as_mut().unwrap().child;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    }
}
