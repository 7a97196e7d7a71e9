//! Deadlines on an upstream attempt that Pingora's own per-read timeout cannot express: time
//! to the response header, time between two chunks, and the request's total deadline.
//!
//! The proxy phases arm the watchdog ([`Watchdog::arm`]: when an attempt starts, when the
//! header arrives, on every chunk). The downstream session wrapper (`body_replay`) waits on
//! [`Watchdog::expired`] in `read_body_or_idle`, which Pingora polls for the whole life of the
//! upstream exchange (it is how Pingora notices a client that went away); when the deadline
//! passes it fails that read with a distinct error type, Pingora abandons the upstream
//! connection, and `error_while_proxy` decides between the next route and a 504.

use pingora::{Error, ErrorType};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// No response header in time (the next route may still answer).
    FirstByte,
    /// The response stalled between two chunks.
    Idle,
    /// The request's (or the attempt's) total deadline.
    Total,
}

impl TimeoutKind {
    pub fn etype(self) -> ErrorType {
        ErrorType::Custom(match self {
            TimeoutKind::FirstByte => ETYPE_FIRST_BYTE,
            TimeoutKind::Idle => ETYPE_IDLE,
            TimeoutKind::Total => ETYPE_TOTAL,
        })
    }

    pub fn from_error(e: &Error) -> Option<TimeoutKind> {
        match e.etype() {
            ErrorType::Custom(ETYPE_FIRST_BYTE) => Some(TimeoutKind::FirstByte),
            ErrorType::Custom(ETYPE_IDLE) => Some(TimeoutKind::Idle),
            ErrorType::Custom(ETYPE_TOTAL) => Some(TimeoutKind::Total),
            _ => None,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            TimeoutKind::FirstByte => "the provider did not start answering in time",
            TimeoutKind::Idle => "the provider stalled between two chunks",
            TimeoutKind::Total => "the request's deadline passed",
        }
    }
}

pub const ETYPE_FIRST_BYTE: &str = "UpstreamFirstByteTimeout";
pub const ETYPE_IDLE: &str = "UpstreamIdleTimeout";
pub const ETYPE_TOTAL: &str = "UpstreamDeadline";

#[derive(Debug, Default)]
pub struct Watchdog {
    /// The deadline in force and what it is. None: disarmed.
    state: Mutex<Option<(Instant, TimeoutKind)>>,
}

impl Watchdog {
    /// Set the deadline: `at` for `kind`, or `total` (as `Total`) if that comes first.
    pub fn arm(&self, at: Instant, kind: TimeoutKind, total: Instant) {
        let v = if total <= at { (total, TimeoutKind::Total) } else { (at, kind) };
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    pub fn disarm(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn get(&self) -> Option<(Instant, TimeoutKind)> {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the deadline in force passes (never while disarmed). Cancel-safe: Pingora
    /// drops and re-creates this future on every turn of its loop.
    pub async fn expired(&self) -> TimeoutKind {
        loop {
            match self.get() {
                None => std::future::pending::<()>().await,
                Some((at, kind)) => {
                    if Instant::now() >= at {
                        return kind;
                    }
                    // Pingora's shared 10 ms-tick timer, not a tokio timer per attempt: see front.rs.
                    pingora::time::fast_timeout::fast_sleep(at.saturating_duration_since(Instant::now())).await;
                    // Re-read: the deadline may have moved while this slept.
                    if let Some((now_at, now_kind)) = self.get() {
                        if Instant::now() >= now_at {
                            return now_kind;
                        }
                    }
                }
            }
        }
    }

    /// The error `read_body_or_idle` fails with.
    pub fn error(kind: TimeoutKind) -> Box<Error> {
        Error::explain(kind.etype(), kind.message())
    }
}

/// `min(a, b)` for optional deadlines.
pub fn earliest(a: Instant, b: Option<Instant>) -> Instant {
    b.map_or(a, |b| a.min(b))
}

/// Remaining time until `deadline`, at least a millisecond (a zero timeout means "none" to some
/// of Pingora's options).
pub fn remaining(deadline: Instant, now: Instant) -> Duration {
    deadline.saturating_duration_since(now).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_at_the_deadline_and_follows_moves() {
        let w = Watchdog::default();
        let now = Instant::now();
        w.arm(now + Duration::from_millis(30), TimeoutKind::FirstByte, now + Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(w.expired().await, TimeoutKind::FirstByte);
        assert!(t.elapsed() >= Duration::from_millis(25));
        // The total deadline wins when it comes first.
        let now = Instant::now();
        w.arm(now + Duration::from_secs(5), TimeoutKind::Idle, now + Duration::from_millis(10));
        assert_eq!(w.expired().await, TimeoutKind::Total);
        // Disarmed: never fires.
        w.disarm();
        let r = tokio::time::timeout(Duration::from_millis(30), w.expired()).await;
        assert!(r.is_err());
    }
}
