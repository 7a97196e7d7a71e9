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
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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

type Sleep = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// The sleep [`Watchdog::expired`] waits on, and when it ends; kept by the caller between
/// calls. With a connection's timer ([`ConnTimer`]) it waits on that instead.
#[derive(Default)]
pub struct Alarm {
    own: Option<(Instant, Sleep)>,
    conn: Option<ConnTimer>,
}

impl Alarm {
    /// An alarm that waits on the connection's timer when the request runs in one's scope
    /// (an HTTP/1 connection served by `front.rs`), or on a sleep of its own.
    pub fn for_this_connection() -> Alarm {
        Alarm { own: None, conn: ConnTimer::current() }
    }
}

/// One tokio timer per HTTP/1 connection, lent in turn to each of its requests' watchdogs (a
/// connection serves one request at a time). Moving its deadline later, which is what every
/// new request and every streamed chunk does, is an atomic store (tokio extends a registered
/// timer in place and looks again when the old deadline comes), where a sleep per request is
/// registered with a timer and cancelled for every request. Created on first use.
#[derive(Clone, Default)]
pub struct ConnTimer(Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>);

tokio::task_local! {
    static CONN_TIMER: ConnTimer;
}

impl ConnTimer {
    /// Runs `fut` (one request of the connection) with this timer as [`ConnTimer::current`].
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        CONN_TIMER.scope(self.clone(), fut)
    }

    /// The timer of the connection whose request is running, if it has one.
    pub fn current() -> Option<ConnTimer> {
        CONN_TIMER.try_with(ConnTimer::clone).ok()
    }

    /// Ready once `at` has passed. Call from a task on a runtime with a timer.
    fn poll_until(&self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let at = tokio::time::Instant::from_std(at);
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx)
    }
}

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
            if let Some(timer) = &alarm.conn {
                // tokio rounds a deadline up to its next millisecond: this wakes at or after
                // `at`, and the loop re-reads the deadline, which may have moved.
                std::future::poll_fn(|cx| timer.poll_until(at, cx)).await;
                continue;
            }
            let sleep = match &mut alarm.own {
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
            alarm.own = None;
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
    async fn a_connection_timer_serves_its_requests_in_turn() {
        let conn = ConnTimer::default();
        assert!(ConnTimer::current().is_none(), "no connection outside a scope");
        for request in 0..2 {
            conn.scope(async {
                let mut alarm = Alarm::for_this_connection();
                assert!(alarm.conn.is_some(), "request {request} borrows the connection's timer");
                let w = Watchdog::default();
                let total = Instant::now() + Duration::from_secs(5);
                // Armed, then moved later before it fires (a chunk arrived): fires at the later one.
                w.arm(Instant::now() + Duration::from_millis(40), TimeoutKind::FirstByte, total);
                let r = tokio::time::timeout(Duration::from_millis(10), w.expired(&mut alarm)).await;
                assert!(r.is_err());
                let t = Instant::now();
                w.arm(Instant::now() + Duration::from_millis(80), TimeoutKind::Idle, total);
                assert_eq!(w.expired(&mut alarm).await, TimeoutKind::Idle);
                assert!(t.elapsed() >= Duration::from_millis(75), "fired after {:?}", t.elapsed());
                // Moved earlier: fires at the earlier one, not the timer's old deadline.
                w.arm(Instant::now() + Duration::from_secs(3), TimeoutKind::Idle, total);
                let r = tokio::time::timeout(Duration::from_millis(5), w.expired(&mut alarm)).await;
                assert!(r.is_err());
                let t = Instant::now();
                w.arm(Instant::now() + Duration::from_millis(20), TimeoutKind::Idle, total);
                assert_eq!(w.expired(&mut alarm).await, TimeoutKind::Idle);
                assert!(t.elapsed() < Duration::from_secs(1), "fired after {:?}", t.elapsed());
            })
            .await;
        }
        // One timer, created once and kept by the connection.
        assert!(conn.0.lock().unwrap().is_some());
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
        let kept = alarm.own.as_ref().map(|(until, _)| *until).expect("a sleep is kept");
        // A later deadline (the idle timer after a chunk) keeps the earlier sleep ...
        w.arm(Instant::now() + Duration::from_millis(200), TimeoutKind::Idle, total);
        let r = tokio::time::timeout(Duration::from_millis(5), w.expired(&mut alarm)).await;
        assert!(r.is_err());
        assert_eq!(alarm.own.as_ref().map(|(until, _)| *until), Some(kept));
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
