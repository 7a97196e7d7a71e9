//! Password hashing for self-service accounts: argon2id, stored as PHC strings.
//!
//! argon2 is deliberately slow and memory-hungry (the crate's defaults: 19 MiB, 2 passes), so
//! it never runs on a proxy worker thread: each hash or verify goes to tokio's blocking pool,
//! and a semaphore admits only one per core at a time, so a login flood queues instead of
//! taking the cores (and 19 MiB each) from inference.
//!
//! Unknown emails and accounts without a password are verified against a dummy hash made with
//! the same parameters, so they take the same time as a wrong password: timing does not tell
//! which emails have accounts.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use super::error::ApiError;

/// Shortest and longest passwords accepted at registration (bytes). The upper bound keeps a
/// request from making argon2 pre-hash megabytes.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

pub struct Passwords {
    permits: Semaphore,
    dummy: Arc<OnceLock<String>>,
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

impl Passwords {
    pub fn new() -> Passwords {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Passwords { permits: Semaphore::new(cores), dummy: Arc::new(OnceLock::new()) }
    }

    /// Checks a new password's length: 400 with a message saying why.
    pub fn check_new(password: &str) -> Result<(), ApiError> {
        if password.len() < MIN_LEN || password.len() > MAX_LEN {
            return Err(ApiError::invalid_request(format!(
                "'password' must be {MIN_LEN} to {MAX_LEN} bytes long"
            ))
            .with_param("password"));
        }
        Ok(())
    }

    /// The PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_blocking(&password)).await?.map_err(|e| {
            log::error!("password hashing failed: {e}");
            ApiError::internal("password hashing failed")
        })
    }

    /// Whether `password` matches `phc`; with None (no such account, or no password) it
    /// checks against the dummy hash and answers false, in the same time.
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let dummy = self.dummy.clone();
        let result = self
            .run(move || {
                let target = phc.as_deref().unwrap_or_else(|| dummy_hash(&dummy));
                let ok = verify_blocking(&password, target);
                ok && phc.is_some()
            })
            .await;
        result.unwrap_or(false)
    }

    /// Computes the dummy hash ahead of the first unknown-email login (background start-up).
    pub async fn warm(&self) {
        let dummy = self.dummy.clone();
        let _ = self.run(move || dummy_hash(&dummy).len()).await;
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::internal("password hashing is shut down"))?;
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            log::error!("password task failed: {e}");
            ApiError::internal("password check failed")
        })
    }
}

fn dummy_hash(cell: &OnceLock<String>) -> &str {
    cell.get_or_init(|| hash_blocking("tollgate dummy password").unwrap_or_default())
}

fn hash_blocking(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The parameters come from the PHC string itself, so hashes made with older defaults still
/// verify.
fn verify_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn hash_verify_and_dummy() {
        let p = Passwords::new();
        block_on(async {
            let phc = p.hash("correct horse".into()).await.unwrap();
            assert!(phc.starts_with("$argon2id$"), "{phc}");
            assert!(!phc.contains("correct horse"));
            assert!(p.verify("correct horse".into(), Some(phc.clone())).await);
            assert!(!p.verify("wrong horse".into(), Some(phc.clone())).await);
            assert!(!p.verify("correct horse".into(), None).await);
            assert!(!p.verify("x".into(), Some("not a phc string".into())).await);
            // The dummy and a real hash cost about the same.
            p.warm().await;
            let t = Instant::now();
            assert!(!p.verify("guess".into(), Some(phc)).await);
            let real = t.elapsed();
            let t = Instant::now();
            assert!(!p.verify("guess".into(), None).await);
            let dummy = t.elapsed();
            eprintln!("argon2 verify: real {real:?}, dummy {dummy:?}");
            let ratio = real.as_secs_f64() / dummy.as_secs_f64();
            assert!((0.4..2.5).contains(&ratio), "real {real:?} vs dummy {dummy:?}");
        });
        assert!(Passwords::check_new("short").is_err());
        assert!(Passwords::check_new("long enough").is_ok());
    }
}
