//! TLS with rustls on both sides.
//!
//! The listener: handshakes from rustls clients (reqwest, and rustls by hand) and `curl
//! --http2`, TLS 1.0/1.1 refused, certificates picked by SNI, reloaded without a restart (a
//! bad file keeps the old one). Upstreams: gateway B reaches gateway A over TLS (B trusts the
//! development CA through SSL_CERT_FILE), HTTP/2 to a provider offering it, and a provider's
//! `ca_bundle` trusted where the system roots are not.
//!
//! Certificates are generated per test by `scripts/gen-certs.sh` (openssl) into scratch dirs.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-certs.sh");

/// A development CA and a `localhost`/127.0.0.1 server certificate in a scratch dir.
fn dev_certs() -> PathBuf {
    let certs = scratch_dir("certs");
    let ok = Command::new("bash").arg(GEN).arg(&certs).stdout(Stdio::null()).status().unwrap();
    assert!(ok.success(), "certificate generation failed");
    certs
}

/// One more certificate for `name` from the same CA: `dir/out.pem`, `dir/out.key`.
fn leaf(dir: &Path, name: &str, out: &str) {
    let ok = Command::new("bash").arg(GEN).args(["--leaf"]).arg(dir).args([name, out]).stdout(Stdio::null()).status().unwrap();
    assert!(ok.success(), "certificate generation failed for {name}");
}

/// The DER of the first certificate in a PEM file.
fn der_of(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// A gateway in front of `mock` with `server` lines in `[server]` and `extra` appended.
fn gateway_with(mock: Mock, server: &str, extra: &str) -> Gateway {
    let dir = scratch_dir("gw-tls");
    let port = free_port();
    let metrics_port = free_port();
    let config_path = dir.join("tollgate.toml");
    let extra = format!("{extra}\n[billing]\ntiers = []\n");
    let text = config_for(port, metrics_port, &dir.join("data"), mock.port, &extra)
        .replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
    std::fs::write(&config_path, text).unwrap();
    let mut gw = Gateway { port, metrics_port, stdout_path: dir.join("stdout.log"), dir, config_path, proc: None, mock };
    gw.spawn();
    gw
}

/// A gateway with a TLS listener on the returned port (`server.pem` as the default
/// certificate) plus `more` lines in `[server]`.
fn tls_gateway(certs: &Path, more: &str) -> (Gateway, u16) {
    let tls_port = free_port();
    let server = format!(
        "tls_listen = [\"127.0.0.1:{tls_port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{more}",
        certs.join("server.pem").display(),
        certs.join("server.key").display()
    );
    let gw = gateway_with(Mock::start_with(&["--api-key", PROVIDER_KEY]), &server, "");
    wait_for_port(tls_port, Duration::from_secs(10));
    (gw, tls_port)
}

/// A reqwest (rustls) client trusting only the development CA, reporting the peer certificate.
fn tls_client(certs: &Path, resolve: &[(&str, u16)]) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let mut b = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tls_info(true)
        .no_proxy()
        .timeout(Duration::from_secs(15));
    for (name, port) in resolve {
        b = b.resolve(name, ([127, 0, 0, 1], *port).into());
    }
    b.build().unwrap()
}

/// The certificate the server presented for a response.
fn peer_cert(r: &reqwest::blocking::Response) -> Vec<u8> {
    r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate()).expect("TLS info").to_vec()
}

/// A kept-open rustls connection speaking HTTP/1.1 by hand (to prove a connection outlives a
/// certificate reload).
struct RawTls {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl RawTls {
    fn open(certs: &Path, port: u16, name: &str) -> RawTls {
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(name.to_string()).unwrap()).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawTls { stream: rustls::StreamOwned::new(conn, tcp) }
    }

    /// `GET /healthz` on this connection: the status code.
    fn healthz(&mut self) -> u16 {
        self.stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return text[9..12].parse().unwrap();
                }
            }
        }
    }

    fn peer_cert(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

/// A ClientHello offering at most `version` (0x0302 = TLS 1.1, 0x0303 = TLS 1.2), with ECDHE
/// suites of both eras, for `localhost`.
fn client_hello(version: u16) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    let mut body = version.to_be_bytes().to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc009, 0xc013];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    suites.iter().for_each(|s| body.extend(s.to_be_bytes()));
    body.extend([1, 0]); // compression: null
    let name = b"localhost";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut exts = Vec::new();
    ext(&mut exts, 0x0000, &sni);
    ext(&mut exts, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // x25519, secp256r1
    ext(&mut exts, 0x000b, &[1, 0]); // uncompressed points
    ext(&mut exts, 0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]); // ecdsa_p256_sha256, rsa_pss_sha256
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1u8]; // client_hello
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// The first byte the server answers a ClientHello with (0x16 handshake = ServerHello, 0x15
/// alert), or None when it just closes.
fn answer_to_hello(port: u16, version: u16) -> Option<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&client_hello(version)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

fn curl_has_http2() -> bool {
    Command::new("curl").arg("-V").output().map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2")).unwrap_or(false)
}

/// Poll until `f` holds (bounded).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    let needle = format!("tollgate_tls_cert_reloads_total{{result=\"{result}\"}} ");
    gw.metrics().lines().find_map(|l| l.strip_prefix(&needle).map(|v| v.trim().parse().unwrap())).unwrap_or(0)
}

#[test]
fn tls_listener_serves_rustls_clients_and_curl_over_h2_and_refuses_tls_1_1() {
    let certs = dev_certs();
    let (gw, tls_port) = tls_gateway(&certs, "");
    let (_, key) = gw.account_with_key("5");

    // A rustls client (reqwest) trusting only the development CA: a chat completion.
    let client = tls_client(&certs, &[]);
    let r = client
        .post(format!("https://127.0.0.1:{tls_port}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&hello("mock/echo-1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(peer_cert(&r), der_of(&certs.join("server.pem")));
    let v: Value = r.json().unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("mock provider"));

    // curl negotiates h2 by ALPN, and still gets http/1.1 when it asks for it.
    if curl_has_http2() {
        for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "15", flag, "--cacert"])
                .arg(certs.join("ca.pem"))
                .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}", "-H"])
                .arg(format!("authorization: Bearer {key}"))
                .args(["-H", "content-type: application/json", "-d"])
                .arg(hello("mock/echo-1").to_string())
                .arg(format!("https://localhost:{tls_port}/v1/chat/completions"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want} 200"), "curl {flag}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // A streamed answer over h2, end to end.
        let mut body = hello("mock/echo-1");
        body["stream"] = json!(true);
        let out = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "15", "--http2", "--cacert"])
            .arg(certs.join("ca.pem"))
            .args(["-H"])
            .arg(format!("authorization: Bearer {key}"))
            .args(["-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("https://localhost:{tls_port}/v1/chat/completions"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("data: [DONE]"), "curl --http2 stream: {text} {}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("curl lacks HTTP/2 support: skipping the curl --http2 check");
    }

    // TLS 1.2 is answered with a ServerHello; a client offering at most TLS 1.1 is not.
    assert_eq!(answer_to_hello(tls_port, 0x0303), Some(0x16), "a TLS 1.2 ClientHello gets a ServerHello");
    let old = answer_to_hello(tls_port, 0x0302);
    assert_ne!(old, Some(0x16), "TLS 1.1 must be refused");
    let old10 = answer_to_hello(tls_port, 0x0301);
    assert_ne!(old10, Some(0x16), "TLS 1.0 must be refused");
    // The plain listener is unaffected.
    assert_eq!(gw.chat(&key, hello("mock/echo-1")).status(), 200);
}

#[test]
fn sni_picks_the_certificate_for_each_name() {
    let certs = dev_certs();
    leaf(&certs, "api.tollgate.test", "api");
    leaf(&certs, "*.wild.tollgate.test", "wild");
    let more = format!(
        "tls_certs = [\n  {{ names = [\"api.tollgate.test\"], cert = \"{}\", key = \"{}\" }},\n  \
         {{ names = [\"*.wild.tollgate.test\"], cert = \"{}\", key = \"{}\" }},\n]\n",
        certs.join("api.pem").display(),
        certs.join("api.key").display(),
        certs.join("wild.pem").display(),
        certs.join("wild.key").display()
    );
    // Inline tables: these lines go at the top of `[server]`.
    let (gw, tls_port) = tls_gateway(&certs, &more);
    let client = tls_client(
        &certs,
        &[("api.tollgate.test", tls_port), ("x.wild.tollgate.test", tls_port), ("localhost", tls_port)],
    );
    for (host, file) in [("api.tollgate.test", "api.pem"), ("x.wild.tollgate.test", "wild.pem"), ("localhost", "server.pem")] {
        let r = client.get(format!("https://{host}:{tls_port}/healthz")).send().unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(peer_cert(&r), der_of(&certs.join(file)), "{host} gets {file}");
    }
    // No SNI (an IP address) and an unknown name get the default certificate.
    let r = client.get(format!("https://127.0.0.1:{tls_port}/healthz")).send().unwrap();
    assert_eq!(peer_cert(&r), der_of(&certs.join("server.pem")));
    let lax = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .no_proxy()
        .resolve("other.tollgate.test", ([127, 0, 0, 1], tls_port).into())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let r = lax.get(format!("https://other.tollgate.test:{tls_port}/healthz")).send().unwrap();
    assert_eq!(peer_cert(&r), der_of(&certs.join("server.pem")));
    drop(gw);
}

#[test]
fn certificates_reload_without_a_restart_and_a_bad_file_keeps_the_old_one() {
    let certs = dev_certs();
    let (gw, tls_port) = tls_gateway(&certs, "");
    let old = der_of(&certs.join("server.pem"));
    let fresh = |port| tls_client(&certs, &[("localhost", port)]).get(format!("https://localhost:{port}/healthz")).send().unwrap();
    assert_eq!(peer_cert(&fresh(tls_port)), old);

    // A connection opened before the renewal.
    let mut kept = RawTls::open(&certs, tls_port, "localhost");
    assert_eq!(kept.healthz(), 200);
    assert_eq!(kept.peer_cert(), old);

    // Renewal: a new certificate and key for the same name, renamed over the old files.
    leaf(&certs, "localhost", "renewed");
    std::fs::rename(certs.join("renewed.key"), certs.join("server.key")).unwrap();
    std::fs::rename(certs.join("renewed.pem"), certs.join("server.pem")).unwrap();
    let renewed = der_of(&certs.join("server.pem"));
    assert_ne!(renewed, old);
    eventually("the renewed certificate", || peer_cert(&fresh(tls_port)) == renewed);
    assert!(reloads(&gw, "success") >= 1);
    // The connection from before is untouched and still serves requests.
    assert_eq!(kept.healthz(), 200);
    assert_eq!(kept.peer_cert(), old);

    // A broken certificate file is refused, logged and counted; the renewed one stays.
    let failures = reloads(&gw, "failure");
    std::fs::write(certs.join("server.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    eventually("a failed reload", || reloads(&gw, "failure") > failures);
    assert_eq!(peer_cert(&fresh(tls_port)), renewed);
    // A key that does not match the certificate: refused too.
    leaf(&certs, "localhost", "other");
    std::fs::write(certs.join("server.pem"), std::fs::read(certs.join("other.pem")).unwrap()).unwrap();
    let failures = reloads(&gw, "failure");
    eventually("a refused mismatched key", || reloads(&gw, "failure") > failures);
    assert_eq!(peer_cert(&fresh(tls_port)), renewed);
    assert!(gw.stderr().contains("does not match the certificate"), "{}", gw.stderr());

    // Fixed (the matching key arrives), then SIGHUP forces a reload with nothing changed.
    std::fs::write(certs.join("server.key"), std::fs::read(certs.join("other.key")).unwrap()).unwrap();
    let other = der_of(&certs.join("other.pem"));
    eventually("the fixed pair", || peer_cert(&fresh(tls_port)) == other);
    let ok = reloads(&gw, "success");
    gw.signal("HUP");
    eventually("a SIGHUP reload", || reloads(&gw, "success") > ok);
    assert_eq!(peer_cert(&fresh(tls_port)), other);
    assert_eq!(kept.healthz(), 200);
}

#[test]
fn https_providers_get_http2_and_their_own_ca_bundle() {
    let certs = dev_certs();
    let mock_tls = free_port();
    let mock = Mock::start_with(&[
        "--api-key",
        PROVIDER_KEY,
        "--tls-listen",
        &format!("127.0.0.1:{mock_tls}"),
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server.key").to_str().unwrap(),
    ]);
    wait_for_port(mock_tls, Duration::from_secs(10));
    let ca = certs.join("ca.pem");
    let provider = |name: &str, more: &str| {
        format!(
            "[providers.{name}]\nkind = \"openai\"\nbase_url = \"https://127.0.0.1:{mock_tls}/v1\"\n\
             api_key_env = \"TOLLGATE_TEST_PROVIDER_KEY\"\nread_timeout_secs = 5\nconnect_timeout_secs = 3\n{more}\n\
             [[models]]\nslug = \"{name}/echo\"\nprovider = \"{name}\"\nupstream_model = \"{name}-upstream\"\n\
             context_length = 32768\ninput_per_mtok = 1\noutput_per_mtok = 1\nmax_attempts = 1\n"
        )
    };
    let extra = [
        provider("private", &format!("ca_bundle = \"{}\"", ca.display())),
        provider("privateh1", &format!("ca_bundle = \"{}\"\nhttp2 = false", ca.display())),
        // The system roots do not know the development CA.
        provider("public", ""),
    ]
    .join("\n");
    let gw = gateway_with(mock, "", &extra);
    let (_, key) = gw.account_with_key("5");

    let seen = |upstream_model: &str| -> Vec<String> {
        gw.mock
            .requests()
            .iter()
            .filter(|r| r["model"] == upstream_model)
            .map(|r| r["http_version"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for _ in 0..3 {
        let r = gw.chat(&key, hello("private/echo"));
        assert_eq!(r.status(), 200, "{}", gw.stderr());
    }
    assert_eq!(seen("private-upstream"), vec!["HTTP/2"; 3], "h2 offered and taken");
    let r = gw.chat(&key, hello("privateh1/echo"));
    assert_eq!(r.status(), 200);
    assert_eq!(seen("privateh1-upstream"), vec!["HTTP/1.1"], "http2 = false");
    // Default verification: the private CA is not trusted, nothing reaches the provider.
    let r = gw.chat(&key, hello("public/echo"));
    assert!(r.status().is_server_error(), "got {}", r.status());
    assert!(seen("public-upstream").is_empty());
    // A streamed answer over h2 too.
    let mut body = hello("private/echo");
    body["stream"] = json!(true);
    let r = gw.chat(&key, body);
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[test]
fn check_reports_bad_certificates_by_key_path() {
    let certs = dev_certs();
    leaf(&certs, "api.tollgate.test", "api");
    let dir = scratch_dir("check-tls");
    let config = dir.join("t.toml");
    let p = |f: &str| certs.join(f).display().to_string();
    let write_and_check = |server: &str, provider_extra: &str| -> String {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = [\"127.0.0.1:1\"]\ntls_listen = [\"127.0.0.1:2\"]\n{server}\n\
                 [providers.p]\nkind = \"openai\"\nbase_url = \"https://127.0.0.1:3/v1\"\n{provider_extra}\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN).args(["check", "--config"]).arg(&config).output().unwrap();
        assert!(!out.status.success(), "check should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = write_and_check(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n[[server.tls_certs]]\nnames = [\"api.tollgate.test\", \"nope.example.com\"]\n\
             cert = \"{}\"\nkey = \"{}\"\n[[server.tls_certs]]\nnames = [\"b.tollgate.test\"]\ncert = \"{}\"\nkey = \"/no/such.key\"\n",
            p("server.pem"),
            p("api.key"),
            p("api.pem"),
            p("api.key"),
            p("api.pem")
        ),
        "ca_bundle = \"/no/such/ca.pem\"",
    );
    assert!(err.contains("server.tls_key: ") && err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("server.tls_certs[0].names[1]: 'nope.example.com' is not covered"), "{err}");
    assert!(err.contains("server.tls_certs[1].key: cannot read"), "{err}");
    assert!(err.contains("providers.p.ca_bundle: cannot read"), "{err}");
    let err = write_and_check("tls_cert = \"/no/such.pem\"", "");
    assert!(err.contains("server.tls_key: required with server.tls_cert"), "{err}");
    let err = write_and_check("", "");
    assert!(err.contains("server.tls_listen: needs server.tls_cert"), "{err}");
}

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

/// Certificates renewed again and again (and a SIGHUP) while clients keep sending inference
/// requests over TLS, some on kept-alive connections, some on new ones: nothing fails, and the
/// new connections end up on the last certificate.
#[test]
fn certificate_reloads_under_load_lose_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let certs = dev_certs();
    let (gw, tls_port) = tls_gateway(&certs, "");
    let (_, key) = gw.account_with_key("50");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4u32)
        .map(|w| {
            let (certs, key, stop, ok, failed) = (certs.clone(), key.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut client = tls_client(&certs, &[("localhost", tls_port)]);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Half the workers start a new connection (a new handshake) every few requests.
                    if w.is_multiple_of(2) && n.is_multiple_of(5) {
                        client = tls_client(&certs, &[("localhost", tls_port)]);
                    }
                    n += 1;
                    let r = client
                        .post(format!("https://localhost:{tls_port}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&hello("mock/echo-1"))
                        .send();
                    match r {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            eprintln!("worker {w}: HTTP {}", r.status());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("worker {w}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let fresh = || tls_client(&certs, &[("localhost", tls_port)]).get(format!("https://localhost:{tls_port}/healthz")).send().unwrap();
    for round in 0..4 {
        let name = format!("renewed{round}");
        leaf(&certs, "localhost", &name);
        std::fs::rename(certs.join(format!("{name}.key")), certs.join("server.key")).unwrap();
        std::fs::rename(certs.join(format!("{name}.pem")), certs.join("server.pem")).unwrap();
        let renewed = der_of(&certs.join("server.pem"));
        eventually("the renewed certificate", || peer_cert(&fresh()) == renewed);
        if round == 2 {
            gw.signal("HUP");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("certificate reloads under load: {ok} requests served, {failed} failed");
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert_eq!(failed, 0, "no request failed across the reloads");
    assert!(reloads(&gw, "success") >= 4);
}
