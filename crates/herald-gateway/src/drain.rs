//! The drain SIGTERM starts, and its schedule. Telling every client to
//! reconnect (4200) in the same millisecond sends them all to the other pods
//! at once; instead each open session takes a turn when the drain starts, and
//! the turns are spread evenly over `drain_window`: with `n` sessions open at
//! the start, the `k`-th to take its turn is closed at `start + window · k / n`
//! (the first at once, the last one slot before the window ends). A session
//! whose client leaves earlier just ends; nothing waits for its slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The node's drain: whether it started, and when each session's turn is.
pub struct Drain {
    window: Duration,
    started: CancellationToken,
    schedule: OnceLock<Schedule>,
    /// Sessions open now.
    open: AtomicUsize,
    /// Turns handed out since the drain started.
    turns: AtomicUsize,
}

/// Fixed when the drain starts.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    at: Instant,
    sessions: usize,
}

/// Counts a session as open until dropped.
pub struct OpenSession<'a>(&'a Drain);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    /// A drain that spreads its closes over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            started: CancellationToken::new(),
            schedule: OnceLock::new(),
            open: AtomicUsize::new(0),
            turns: AtomicUsize::new(0),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Starts the drain (once; later calls change nothing) and returns how
    /// many sessions its schedule is spread over.
    pub fn start(&self) -> usize {
        let schedule =
            *self.schedule.get_or_init(|| Schedule { at: Instant::now(), sessions: self.open.load(Ordering::Acquire) });
        self.started.cancel();
        schedule.sessions
    }

    /// Counts a session as open (for the schedule) while the guard lives.
    pub fn open(&self) -> OpenSession<'_> {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenSession(self)
    }

    /// Completes when it is this session's turn to be closed: never before
    /// the drain starts, then at the next free slot of the schedule.
    pub async fn turn(&self) {
        self.started.cancelled().await;
        let Some(schedule) = self.schedule.get().copied() else { return };
        let k = self.turns.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep_until(schedule.at + slot(self.window, k, schedule.sessions)).await;
    }
}

/// The offset of turn `k` of `n` in `window`; turns beyond `n` (sessions
/// that opened while the drain was starting) get the end of the window.
fn slot(window: Duration, k: usize, n: usize) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let nanos = window.as_nanos() * k.min(n) as u128 / n as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Runs `n` sessions' turns and returns when each came, from the start.
    async fn turns(drain: Arc<Drain>, n: usize) -> Vec<Duration> {
        let guards: Vec<_> = (0..n).map(|_| drain.open()).collect();
        let waiting: Vec<_> = (0..n)
            .map(|_| {
                let drain = drain.clone();
                tokio::spawn(async move {
                    drain.turn().await;
                    Instant::now()
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let start = Instant::now();
        assert_eq!(drain.start(), n);
        drop(guards);
        let mut at = Vec::new();
        for task in waiting {
            at.push(task.await.unwrap() - start);
        }
        at.sort();
        at
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_spread_evenly_over_the_window() {
        let drain = Arc::new(Drain::new(Duration::from_secs(4)));
        let at = turns(drain, 4).await;
        assert_eq!(at, [0, 1000, 2000, 3000].map(Duration::from_millis));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_closes_everyone_at_once() {
        let at = turns(Arc::new(Drain::new(Duration::ZERO)), 3).await;
        assert_eq!(at, [Duration::ZERO; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_turn_before_the_drain_and_latecomers_get_the_window_end() {
        let drain = Arc::new(Drain::new(Duration::from_secs(10)));
        let early = tokio::spawn({
            let drain = drain.clone();
            async move { drain.turn().await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!early.is_finished(), "a turn before the drain started");
        assert!(!drain.is_draining());
        let _one = drain.open();
        let start = Instant::now();
        assert_eq!(drain.start(), 1);
        assert!(drain.is_draining());
        early.await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A session opened after the start: the last slot.
        let _late = drain.open();
        drain.turn().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // Starting again changes nothing.
        assert_eq!(drain.start(), 1);
    }
}
