//! `POST /admin/backup {"to": "/abs/path", "overwrite": false}`: a consistent, compacted copy
//! of the live store, written by the gateway itself (redb lets one process open the file, so
//! `tollgate backup` asks the running gateway; see `docs/operations.md`).
//!
//! The copy is one MVCC read transaction (`Store::backup_to`), run on the blocking pool: the
//! writer thread and the request path never wait for it. One backup at a time.

use super::auth::Principal;
use super::error::ApiError;
use super::{audit, parse_json, Reply};
use crate::app::App;
use crate::store::writer::WriteOp;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while a backup runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

pub async fn backup(app: &App, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse_json(body)?;
    const FIELDS: [&str; 2] = ["to", "overwrite"];
    if let Some(unknown) = v.as_object().and_then(|o| o.keys().find(|k| !FIELDS.contains(&k.as_str()))) {
        return Err(ApiError::invalid_request(format!("unknown field '{unknown}' (known: to, overwrite)"))
            .with_param(unknown.as_str()));
    }
    let to = match v.get("to") {
        Some(Value::String(s)) if !s.trim().is_empty() => PathBuf::from(s),
        _ => {
            return Err(ApiError::invalid_request("'to' must be the absolute path of the backup file to write")
                .with_param("to"))
        }
    };
    // Relative paths would resolve against the gateway's working directory, which the caller
    // may not know: refuse them rather than write somewhere surprising.
    if !to.is_absolute() || to.file_name().is_none() {
        return Err(ApiError::invalid_request("'to' must be an absolute file path").with_param("to"));
    }
    let overwrite = match v.get("overwrite") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid_request("'overwrite' must be true or false").with_param("overwrite")),
    };
    if to.exists() && !overwrite {
        return Err(ApiError::new(409, "conflict", format!("{} already exists (send \"overwrite\": true to replace it)", to.display()))
            .with_param("to"));
    }
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ApiError::new(409, "conflict", "a backup is already running"));
    }
    let running = Running;
    let store = app.store.clone();
    let dest = to.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _running = running;
        store.backup_to(&dest, overwrite)
    })
    .await
    .map_err(|e| ApiError::internal(format!("backup task failed: {e}")))?;
    let report = result.map_err(|e| {
        log::error!("backup to {} failed: {e}", to.display());
        // The store's message names only paths the caller gave and what went wrong.
        ApiError::new(500, "backup_failed", e.0)
    })?;
    let detail = json!({"to": report.path.display().to_string(), "bytes": report.bytes});
    app.writer.submit(WriteOp::Audit(audit::entry(app, &Principal::Admin, "store.backup", None, detail)));
    Ok(Reply::json(
        200,
        &json!({
            "path": report.path.display().to_string(),
            "bytes": report.bytes,
            "millis": report.millis,
            "rows": report.rows.to_json(),
        }),
    ))
}
