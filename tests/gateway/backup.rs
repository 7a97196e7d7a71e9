//! Backups while serving, restores into a fresh data dir, and the store tools' refusals.

use crate::common::*;
use crate::crash::{check_books, export, gateway_balance_nano, tollgate, Load};
use serde_json::Value;
use std::time::Duration;

/// Ledger and generation lines, for comparing two exports (accounts and the summary's
/// snapshot time aside).
fn records(lines: &[Value]) -> Vec<Value> {
    lines.iter().filter(|l| l["type"] == "ledger" || l["type"] == "generation").cloned().collect()
}

/// An account's keys as the admin API lists them (redacted), ids and names and limits.
fn keys_of(gw: &Gateway, id: u64) -> Value {
    gw.admin_get(&format!("/v1/admin/accounts/{id}"))["keys"].clone()
}

#[test]
fn backup_while_serving_restores_into_a_fresh_gateway() {
    let gw = Gateway::start();
    let config = gw.config_path.to_str().unwrap().to_string();
    let (a, key_a) = gw.account_with_key("0.5");
    let (b, key_b) = gw.account_with_key("0.02");
    // A second key with limits, and a revoked third one: keys must come back as they were.
    let limited = gw.call_ok(
        "POST",
        ADMIN_TOKEN,
        &format!("/v1/admin/accounts/{a}/keys"),
        Some(serde_json::json!({"name": "limited", "rate_limit_rpm": 100000, "daily_cap_usd": "3"})),
        201,
    );
    let revoked = gw.call_ok("POST", ADMIN_TOKEN, &format!("/v1/admin/accounts/{b}/keys"), Some(serde_json::json!({"name": "old"})), 201);
    gw.call_ok("DELETE", ADMIN_TOKEN, &format!("/v1/keys/{}", revoked["id"]), None, 200);
    let keys = vec![key_a.clone(), key_b.clone(), limited["key"].as_str().unwrap().to_string()];

    // The backup is taken in the middle of concurrent traffic (streaming and not) and grants.
    let load = Load::start(gw.port, &keys, 4, Some((b, "during-backup")));
    std::thread::sleep(Duration::from_millis(700));
    let backup = gw.dir.join("backup.redb");
    let (ok, stdout, stderr) = tollgate(&["backup", "--config", &config, "--to", backup.to_str().unwrap()]);
    assert!(ok, "backup failed:\n{stderr}");
    assert!(stdout.contains("by the running gateway"), "{stdout}");
    std::thread::sleep(Duration::from_millis(300));
    let (served, _, _) = load.stop();
    assert!(served > 0);
    let size = std::fs::metadata(&backup).unwrap().len();
    eprintln!("backup under load: {} ({size} bytes)", stdout.trim());

    // Not over an existing file unless asked.
    let (ok, _, stderr) = tollgate(&["backup", "--config", &config, "--to", backup.to_str().unwrap()]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");

    // The snapshot is consistent: every charge with its generation, balances = sums.
    let (snapshot, out) = export(&["--from", backup.to_str().unwrap()], &gw.dir.join("backup.jsonl"));
    assert!(!out.contains("running gateway"), "a backup file is read directly: {out}");
    let books = check_books(&snapshot);
    assert!(books.charges > 0, "the backup caught some charges");

    // Restore into a fresh data dir, start a gateway on it.
    let mock = Mock::keyed();
    let dir = scratch_dir("restored");
    let (port, metrics_port) = (free_port(), free_port());
    let config_path = dir.join("tollgate.toml");
    let text = config_for(port, metrics_port, &dir.join("data"), mock.port, "\n[billing]\ntiers = []\n");
    std::fs::write(&config_path, text).unwrap();
    let restored_config = config_path.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = tollgate(&["restore", "--config", &restored_config, "--from", backup.to_str().unwrap()]);
    assert!(ok, "restore failed:\n{stderr}");
    assert!(stdout.contains("restored") && !stdout.contains("kept as"), "{stdout}");
    let mut restored = Gateway { port, metrics_port, stdout_path: dir.join("stdout.log"), dir, config_path, proc: None, mock };
    restored.spawn();

    // Same balances, same ledger and generations, same keys.
    for id in [a, b] {
        assert_eq!(gateway_balance_nano(&restored, id), books.balances[&id], "balance of {id}");
    }
    let strip_last_used = |v: Value| -> Value {
        let mut v = v;
        for k in v.as_array_mut().unwrap() {
            k.as_object_mut().unwrap().remove("last_used");
        }
        v
    };
    for id in [a, b] {
        assert_eq!(strip_last_used(keys_of(&restored, id)), strip_last_used(keys_of(&gw, id)), "keys of {id}");
    }
    let (after, out) = export(&["--config", &restored_config], &restored.dir.join("restored.jsonl"));
    assert!(out.contains("by the running gateway"), "{out}");
    assert_eq!(records(&after), records(&snapshot), "the restored store holds exactly the backup");
    // The old secrets work, the revoked key stays revoked.
    assert_eq!(restored.chat(&key_a, hello("mock/echo-1")).status(), 200);
    assert_eq!(restored.chat(revoked["key"].as_str().unwrap(), hello("mock/echo-1")).status(), 401);

    // No restore under a running gateway.
    let (ok, _, stderr) = tollgate(&["restore", "--config", &restored_config, "--from", backup.to_str().unwrap()]);
    assert!(!ok && stderr.contains("running gateway"), "{stderr}");
    // Stopped, it restores again, keeping the replaced store aside.
    restored.kill9();
    let (ok, stdout, stderr) = tollgate(&["restore", "--config", &restored_config, "--from", backup.to_str().unwrap()]);
    assert!(ok && stdout.contains("kept as"), "{stdout}{stderr}");
}

#[test]
fn store_tools_refuse_bad_input_with_a_clear_error() {
    let dir = scratch_dir("store-tools");
    let config_path = dir.join("tollgate.toml");
    std::fs::write(&config_path, config_for(free_port(), free_port(), &dir.join("data"), 1, "")).unwrap();
    let config = config_path.to_str().unwrap();
    let garbage = dir.join("garbage.redb");
    std::fs::write(&garbage, b"not a database at all").unwrap();
    let garbage = garbage.to_str().unwrap();
    let missing = dir.join("missing.redb");
    let missing = missing.to_str().unwrap();
    let out = dir.join("out.jsonl");
    let out = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["backup", "--config", config, "--to", out], "no store at"),
        (vec!["backup", "--config", "/no/such/config.toml", "--to", out], "cannot read"),
        (vec!["backup", "--config", config, "--to", dir.to_str().unwrap()], "is a directory"),
        (vec!["restore", "--config", config, "--from", missing], "not a file"),
        (vec!["restore", "--config", config, "--from", garbage], "cannot be restored"),
        (vec!["export", "--config", config, "--to", out], "no store at"),
        (vec!["export", "--from", missing, "--to", out], "no store at"),
        (vec!["export", "--from", garbage, "--to", out], "cannot open"),
        (vec!["export", "--from", garbage, "--since", "yesterday", "--to", "-"], "--since"),
        (vec!["export", "--from", garbage, "--to", ""], "--to"),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = tollgate(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: expected '{expected}' in:\n{stderr}");
    }
    // A refused restore created nothing but the (empty) data dir.
    let data: Vec<_> = std::fs::read_dir(dir.join("data")).map(|d| d.collect()).unwrap_or_default();
    assert!(data.is_empty(), "{data:?}");
    // An existing export file is not replaced without --force.
    std::fs::write(out, b"keep me").unwrap();
    let (ok, _, stderr) = tollgate(&["export", "--from", garbage, "--to", out]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(out).unwrap(), b"keep me");
    let _ = std::fs::remove_dir_all(&dir);
}
