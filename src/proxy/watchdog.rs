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

type Sleep = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

/// The sleep [`Watchdog::expired`] waits on, and when it ends; kept by the caller between
/// calls.
#[derive(Default)]
pub struct Alarm(Option<(Instant, Sleep)>);

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
    /// drops and re-creates this future on every turn of its loop (once per upstream chunk),
    /// so the sleep itself lives in `alarm`, which the caller keeps across those turns: a
    /// turn that finds a sleep ending no later than the deadline waits on it instead of
    /// registering another timer. The deadline moves later on every chunk (idle), so a
    /// stream registers a timer when a kept sleep ends early, not once per chunk.
    pub async fn expired(&self, alarm: &mut Alarm) -> TimeoutKind {
        loop {
            let Some((at, kind)) = self.get() else {
                return std::future::pending().await;
            };
            let now = Instant::now();
            if now >= at {
                return kind;
            }
            let sleep = match &mut alarm.0 {
                // Waking before `at` only costs a re-check.
                Some((until, sleep)) if *until <= at => sleep,
                slot => {
                    // Pingora's shared 10 ms-tick timer, not a tokio timer per attempt: see front.rs.
                    let sleep: Sleep = Box::pin(pingora::time::fast_timeout::fast_sleep(at - now));
                    &mut slot.insert((at, sleep)).1
                }
            };
            sleep.await;
            // Spent: never polled again. The loop re-reads the deadline, which may have moved.
            alarm.0 = None;
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
        let mut alarm = Alarm::default();
        let t = Instant::now();
        assert_eq!(w.expired(&mut alarm).await, TimeoutKind::FirstByte);
        assert!(t.elapsed() >= Duration::from_millis(25));
        // The total deadline wins when it comes first.
        let now = Instant::now();
        w.arm(now + Duration::from_secs(5), TimeoutKind::Idle, now + Duration::from_millis(10));
        assert_eq!(w.expired(&mut alarm).await, TimeoutKind::Total);
        // Disarmed: never fires.
        w.disarm();
        let r = tokio::time::timeout(Duration::from_millis(30), w.expired(&mut alarm)).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn a_kept_sleep_serves_later_deadlines_and_yields_to_earlier_ones() {
        let w = Watchdog::default();
        let mut alarm = Alarm::default();
        let total = Instant::now() + Duration::from_secs(5);
        // Armed, then the waiting future is dropped (Pingora's next loop turn): the sleep stays.
        w.arm(Instant::now() + Duration::from_millis(80), TimeoutKind::FirstByte, total);
        let r = tokio::time::timeout(Duration::from_millis(5), w.expired(&mut alarm)).await;
        assert!(r.is_err());
        let kept = alarm.0.as_ref().map(|(until, _)| *until).expect("a sleep is kept");
        // A later deadline (the idle timer after a chunk) keeps the earlier sleep ...
        w.arm(Instant::now() + Duration::from_millis(200), TimeoutKind::Idle, total);
        let r = tokio::time::timeout(Duration::from_millis(5), w.expired(&mut alarm)).await;
        assert!(r.is_err());
        assert_eq!(alarm.0.as_ref().map(|(until, _)| *until), Some(kept));
        // ... and still fires at the later one, not at the kept sleep's end.
        let t = Instant::now();
        assert_eq!(w.expired(&mut alarm).await, TimeoutKind::Idle);
        assert!(t.elapsed() >= Duration::from_millis(150), "fired after {:?}", t.elapsed());
        // An earlier deadline replaces a later sleep.
        w.arm(Instant::now() + Duration::from_secs(3), TimeoutKind::Idle, total);
        let r = tokio::time::timeout(Duration::from_millis(5), w.expired(&mut alarm)).await;
        assert!(r.is_err());
        w.arm(Instant::now() + Duration::from_millis(30), TimeoutKind::Idle, total);
        let t = Instant::now();
        assert_eq!(w.expired(&mut alarm).await, TimeoutKind::Idle);
        assert!(t.elapsed() < Duration::from_secs(1), "fired after {:?}", t.elapsed());
    }
}
