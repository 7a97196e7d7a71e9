//! HTTPS upstreams through rustls, and the TLS listener: gateway B reaches gateway A over
//! TLS (A serves `tls_listen` with a development certificate; B trusts the development CA
//! through SSL_CERT_FILE, as it would a private PKI), and A reaches the mock.

use crate::common::*;
use serde_json::Value;
use std::process::{Command, Stdio};

#[test]
fn an_https_provider_is_reached_through_rustls() {
    let certs = scratch_dir("certs");
    let ok = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-certs.sh"))
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "certificate generation failed");

    // A: plain + TLS listeners in front of the mock.
    let tls_port = free_port();
    let a = Gateway::start_extra("");
    let text = std::fs::read_to_string(&a.config_path).unwrap().replacen(
        "[server]\n",
        &format!(
            "[server]\ntls_listen = [\"127.0.0.1:{tls_port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            certs.join("server.pem").display(),
            certs.join("server.key").display()
        ),
        1,
    );
    std::fs::write(&a.config_path, text).unwrap();
    let mut a = a;
    a.kill9();
    a.spawn();
    wait_for_port(tls_port, std::time::Duration::from_secs(10));
    let (_, a_key) = a.account_with_key("5");

    // B: its provider is A over https, with A's key as the provider key.
    let dir = scratch_dir("gw-b");
    let port = free_port();
    let config = dir.join("b.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
data_dir = "{data}"
metrics_listen = ""
[providers.upstream_gateway]
kind = "openai"
base_url = "https://127.0.0.1:{tls_port}/v1"
api_key_env = "B_PROVIDER_KEY"
[[models]]
slug = "via-a/echo"
provider = "upstream_gateway"
upstream_model = "mock/echo-1"
context_length = 32768
input_per_mtok = 1
output_per_mtok = 1
"#,
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    let b_proc = Proc {
        child: Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("B_PROVIDER_KEY", &a_key)
            .env("SSL_CERT_FILE", certs.join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let b = Gateway { port, metrics_port: 0, dir: dir.clone(), config_path: config, stdout_path: dir.join("x"), proc: Some(b_proc), mock: Mock::start() };
    b.wait_ready();
    let (_, b_key) = b.account_with_key("5");
    let r = b.chat(&b_key, hello("via-a/echo"));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["model"], "via-a/echo", "B names its own slug");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("mock provider"));
    // A billed its own key (B's provider key) for the same request.
    let a_credits = a.credits(&a_key);
    assert!(usd(&a_credits["data"]["total_usage"]) > 0.0 || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        usd(&a.credits(&a_key)["data"]["total_usage"]) > 0.0
    });
}
