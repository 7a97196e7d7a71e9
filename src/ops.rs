//! The operator's store tools: `tollgate backup`, `tollgate restore` and `tollgate export`.
//!
//! redb lets one process open the store file at a time, and a running gateway holds it. So:
//! - `backup --to FILE` opens the store itself when no gateway runs; when one does (the file
//!   is locked) it asks that gateway over its admin API (`POST /v1/admin/backup`, admin token
//!   from the config's `admin_token_env`), which writes the snapshot.
//! - `export` reads the store directly, a backup file (`--from`), or, when the gateway holds the
//!   store, a snapshot the gateway writes to a temporary file for it.
//! - `restore --from FILE` never runs beside a gateway: it refuses while the store is held.
//!
//! Every function returns a one-line summary for the operator, or an error message; bad input
//! is an error, never a panic. See `docs/operations.md`.

use crate::config::{self, Config};
use crate::store::{self, OpenError, Store, DB_FILE};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the CLI waits for the gateway to write a snapshot (a large store takes a while).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

fn load_config(path: &Path) -> Result<Config, String> {
    config::load(path).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        format!("config {}: {}", path.display(), lines.join("; "))
    })
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("an empty path was given".into());
    }
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn live_store(cfg: &Config) -> PathBuf {
    cfg.server.data_dir.join(DB_FILE)
}

/// `tollgate backup --to FILE [--force]`.
pub fn backup(config_path: &Path, to: &Path, force: bool) -> Result<String, String> {
    let cfg = load_config(config_path)?;
    let to = absolute(to)?;
    if to.is_dir() {
        return Err(format!("{} is a directory; give the backup file's path", to.display()));
    }
    if to.exists() && !force {
        return Err(format!("{} already exists (use --force to replace it)", to.display()));
    }
    let live = live_store(&cfg);
    match Store::open_file(&live) {
        Ok(store) => {
            let r = store.backup_to(&to, force).map_err(|e| e.0)?;
            Ok(format!(
                "backup written to {} ({} bytes, {} accounts, {} ledger entries, {} generations) in {} ms, from {} (no gateway running)",
                r.path.display(),
                r.bytes,
                r.rows.get("accounts").unwrap_or(0),
                r.rows.get("ledger").unwrap_or(0),
                r.rows.get("generations").unwrap_or(0),
                r.millis,
                live.display()
            ))
        }
        Err(OpenError::Locked(_)) => {
            let v = snapshot_via_gateway(&cfg, &to, force)?;
            let rows = &v["rows"];
            Ok(format!(
                "backup written to {} ({} bytes, {} accounts, {} ledger entries, {} generations) in {} ms, by the running gateway",
                v["path"].as_str().unwrap_or("?"),
                v["bytes"],
                rows["accounts"],
                rows["ledger"],
                rows["generations"],
                v["millis"]
            ))
        }
        Err(OpenError::Missing(p)) => Err(format!(
            "no store at {}: nothing to back up (is server.data_dir in {} right?)",
            p.display(),
            config_path.display()
        )),
        Err(OpenError::Other(e)) => Err(e.0),
    }
}

/// `tollgate restore --from FILE`.
pub fn restore(config_path: &Path, from: &Path) -> Result<String, String> {
    let cfg = load_config(config_path)?;
    let from = absolute(from)?;
    let r = store::restore_into(&cfg.server.data_dir, &from).map_err(|e| e.to_string())?;
    let previous = match &r.previous {
        Some(p) => format!("; the previous store was kept as {}", p.display()),
        None => String::new(),
    };
    Ok(format!(
        "restored {} from {} (schema {}, {} accounts, {} keys, {} ledger entries, {} generations){previous}",
        r.store.display(),
        from.display(),
        r.verified.schema_version,
        r.verified.rows.get("accounts").unwrap_or(0),
        r.verified.rows.get("keys").unwrap_or(0),
        r.verified.rows.get("ledger").unwrap_or(0),
        r.verified.rows.get("generations").unwrap_or(0),
    ))
}

/// `--since`: unix seconds, or a UTC date `YYYY-MM-DD` (from its midnight).
pub fn parse_since(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    if text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-' {
        if let Some(day) = crate::api::usage::parse_day(text) {
            return Ok(day * crate::limits::calendar::SECS_PER_DAY);
        }
    }
    Err(format!("--since '{text}': expected unix seconds or a date YYYY-MM-DD (UTC)"))
}

/// A snapshot file that is removed when dropped.
struct TempSnapshot(PathBuf);

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `tollgate export [--from STORE] [--since WHEN] --to FILE|-`.
pub fn export(
    config_path: &Path,
    from: Option<&Path>,
    since: Option<&str>,
    to: &str,
    force: bool,
) -> Result<String, String> {
    let since = since.map(parse_since).transpose()?;
    if to.is_empty() {
        return Err("--to needs a file path, or - for standard output".into());
    }
    let dest = if to == "-" { None } else { Some(absolute(Path::new(to))?) };
    if let Some(d) = &dest {
        if d.is_dir() {
            return Err(format!("{} is a directory; give the export file's path", d.display()));
        }
        if d.exists() && !force {
            return Err(format!("{} already exists (use --force to replace it)", d.display()));
        }
    }
    // The source: the given file (or data dir), else the config's live store.
    let (source, cfg) = match from {
        Some(p) => {
            let p = absolute(p)?;
            let file = if p.is_dir() { p.join(DB_FILE) } else { p };
            (file, None)
        }
        None => {
            let cfg = load_config(config_path)?;
            (live_store(&cfg), Some(cfg))
        }
    };
    let mut _snapshot = None;
    let (store, origin) = match Store::open_file(&source) {
        Ok(s) => (s, source.display().to_string()),
        Err(OpenError::Locked(p)) => {
            let cfg = match cfg {
                Some(c) => c,
                None => {
                    let c = load_config(config_path)?;
                    if live_store(&c) != p && absolute(&live_store(&c)).ok() != Some(p.clone()) {
                        return Err(format!(
                            "{} is in use by another process; export from a backup instead",
                            p.display()
                        ));
                    }
                    c
                }
            };
            let tmp = std::env::temp_dir().join(format!(
                "tollgate-export-snapshot-{}-{}.redb",
                std::process::id(),
                store::now_millis()
            ));
            let tmp = absolute(&tmp)?;
            let guard = TempSnapshot(tmp.clone());
            snapshot_via_gateway(&cfg, &tmp, false)?;
            let s = Store::open_file(&tmp).map_err(|e| e.to_string())?;
            _snapshot = Some(guard);
            (s, format!("a snapshot of {} taken by the running gateway", p.display()))
        }
        Err(e) => return Err(e.to_string()),
    };
    let summary = match &dest {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            store.export_jsonl(since, &mut out).map_err(|e| e.0)?
        }
        Some(d) => {
            let tmp = d.with_file_name(format!(
                ".{}.export-{}",
                d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                std::process::id()
            ));
            let result = (|| -> Result<store::ExportSummary, String> {
                let file = std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
                let mut out = std::io::BufWriter::new(file);
                let summary = store.export_jsonl(since, &mut out).map_err(|e| e.0)?;
                let file = out.into_inner().map_err(|e| format!("write {}: {e}", tmp.display()))?;
                file.sync_all().map_err(|e| format!("sync {}: {e}", tmp.display()))?;
                std::fs::rename(&tmp, d).map_err(|e| format!("rename into {}: {e}", d.display()))?;
                Ok(summary)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?
        }
    };
    drop(store);
    Ok(format!(
        "exported {} accounts, {} ledger entries and {} generations{} from {} to {}",
        summary.accounts,
        summary.ledger_entries,
        summary.generations,
        since.map(|s| format!(" (since {s})")).unwrap_or_default(),
        origin,
        dest.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "standard output".into())
    ))
}

/// Asks the running gateway to write a snapshot of its store to `to` (an absolute path).
fn snapshot_via_gateway(cfg: &Config, to: &Path, overwrite: bool) -> Result<Value, String> {
    let body = json!({"to": to.display().to_string(), "overwrite": overwrite});
    let (status, v) = admin_post(cfg, "/v1/admin/backup", &body)?;
    if status == 200 {
        return Ok(v);
    }
    let message = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    Err(format!("the running gateway refused the backup (HTTP {status}): {message}"))
}

/// The gateway's first plain-HTTP listener, as an address to connect to (a wildcard listener
/// is reached on loopback).
fn gateway_addr(cfg: &Config) -> Result<std::net::SocketAddr, String> {
    let listen = cfg.server.listen.first().ok_or_else(|| {
        "the store is in use, but the config has no plain HTTP listener (server.listen) to ask the gateway for a snapshot".to_string()
    })?;
    let mut addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("server.listen '{listen}': {e}"))?
        .next()
        .ok_or_else(|| format!("server.listen '{listen}' resolves to nothing"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

/// One `POST` to the gateway's admin API with the admin token: (status, JSON body). A minimal
/// HTTP/1.1 client (one request, `Connection: close`), enough for the gateway on this host.
fn admin_post(cfg: &Config, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let token = cfg.server.admin_token.as_deref().ok_or_else(|| {
        "the store is held by a running gateway, and its admin token (the variable named by server.admin_token_env, TOLLGATE_ADMIN_TOKEN by default) is not set here: it is needed to ask the gateway for a snapshot".to_string()
    })?;
    let addr = gateway_addr(cfg)?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("the store is in use, but the gateway at {addr} cannot be reached: {e}"))?;
    conn.set_read_timeout(Some(SNAPSHOT_TIMEOUT)).map_err(|e| e.to_string())?;
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).map_err(|e| format!("send to the gateway at {addr}: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(|e| format!("read from the gateway at {addr}: {e}"))?;
    parse_response(&raw).ok_or_else(|| format!("the gateway at {addr} sent a response that is not HTTP/1.1 JSON"))
}

/// Status and JSON body of a complete HTTP/1.1 response (content-length, chunked or
/// until-close framing).
fn parse_response(raw: &[u8]) -> Option<(u16, Value)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    let rest = &raw[head_end + 4..];
    let body: Vec<u8> = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + rest.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
        out
    } else if let Some(n) = length {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    let v = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).ok()? };
    Some((status, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_seconds_and_dates_only() {
        assert_eq!(parse_since("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_since("1970-01-02"), Ok(86_400));
        assert_eq!(parse_since(" 2024-03-01 "), Ok(1_709_251_200));
        for bad in ["", "yesterday", "2024-02-30", "2024-3-1", "-5", "1e9", "2024-03-01T00:00"] {
            assert!(parse_since(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn responses_parse_in_every_framing() {
        let (s, v) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n").unwrap();
        assert_eq!((s, v), (200, json!({"a": 1})));
        let (s, v) =
            parse_response(b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n").unwrap();
        assert_eq!((s, v), (409, json!({"b": 2})));
        let (s, v) = parse_response(b"HTTP/1.1 500 X\r\nConnection: close\r\n\r\n[1]").unwrap();
        assert_eq!((s, v), (500, json!([1])));
        assert!(parse_response(b"garbage").is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnot json").is_none());
    }
}
