//! What the three transports share about losing and regaining their server:
//! the reconnect backoff, "one error per outage" logging, and reporting link
//! changes only when they change.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// First reconnect delay.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(100);
/// Reconnect delays double up to this.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(2);

/// Exponential backoff: 100 ms doubling to 2 s, plus up to 10 % jitter so
/// that nodes restarted together do not reconnect in lockstep.
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = delay_for_attempt(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits [`MIN_DELAY`] again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The delay before reconnect attempt `attempt` (0-based), with jitter.
pub(crate) fn delay_for_attempt(attempt: u32) -> Duration {
    let base = MIN_DELAY.saturating_mul(1u32 << attempt.min(16)).min(MAX_DELAY);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
    base + jitter
}

/// Logs one `error!` when a server becomes unreachable (not one per attempt)
/// and one `info!` when it is back.
pub(crate) struct Outage {
    kind: &'static str,
    url: String,
    since: Option<Instant>,
}

impl Outage {
    pub(crate) fn new(kind: &'static str, url: String) -> Self {
        Self { kind, url, since: None }
    }

    /// An attempt failed or the link broke: logs an error if this starts an
    /// outage, a debug line otherwise.
    pub(crate) fn failed(&mut self, reason: &str) {
        match self.since {
            None => {
                self.since = Some(Instant::now());
                tracing::error!(
                    fabric = self.kind,
                    url = %self.url,
                    %reason,
                    "cluster fabric {} unreachable; retrying in the background",
                    self.url
                );
            }
            Some(since) => {
                tracing::debug!(fabric = self.kind, url = %self.url, %reason, down_for = ?since.elapsed(), "cluster fabric still unreachable")
            }
        }
    }

    /// The link is up: logs that it is back if it had been down.
    pub(crate) fn recovered(&mut self) {
        match self.since.take() {
            Some(since) => tracing::info!(
                fabric = self.kind,
                url = %self.url,
                down_for = ?since.elapsed(),
                "cluster fabric {} is reachable again",
                self.url
            ),
            None => tracing::info!(fabric = self.kind, url = %self.url, "connected to cluster fabric {}", self.url),
        }
    }
}

/// Sends `up` on the link only if it changes it.
pub(crate) fn set_link(link: &watch::Sender<bool>, up: bool) {
    link.send_if_modified(|current| {
        let changed = *current != up;
        *current = up;
        changed
    });
}

/// Sleeps `delay`, or less if `stop` is cancelled; `false` when stopped.
pub(crate) async fn sleep_unless_stopped(delay: Duration, stop: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// A process-wide `tracing` subscriber that keeps this crate's events, so
/// tests can count what a transport logged for its own (unique) URL.
#[cfg(test)]
pub(crate) mod capture {
    use std::fmt::Write;
    use std::sync::{Arc, Mutex, OnceLock};

    use tracing::field::{Field, Visit};
    use tracing::subscriber::Interest;
    use tracing::{span, Event, Level, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<(Level, String)>>>);

    /// The capture, installed as the global subscriber on first use.
    pub(crate) fn logs() -> &'static Captured {
        static LOGS: OnceLock<Captured> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Captured::default();
            tracing::subscriber::set_global_default(logs.clone()).expect("no other global subscriber in unit tests");
            logs
        })
    }

    impl Captured {
        /// Events at `level` whose fields mention every one of `needles`.
        pub(crate) fn count(&self, level: Level, needles: &[&str]) -> usize {
            let events = self.0.lock().unwrap();
            events.iter().filter(|(l, text)| *l == level && needles.iter().all(|n| text.contains(n))).count()
        }
    }

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }

    impl Subscriber for Captured {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::sometimes()
        }
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.target().starts_with("herald_adapter")
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push((*event.metadata().level(), fields.0));
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_100ms_to_2s() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let bases = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*d >= base && *d <= base.mul_f64(1.1), "{d:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(111));
        assert!(delay_for_attempt(u32::MAX) <= MAX_DELAY.mul_f64(1.1));
    }

    #[test]
    fn link_changes_are_sent_once() {
        let (tx, mut rx) = watch::channel(false);
        set_link(&tx, false);
        assert!(!rx.has_changed().unwrap());
        set_link(&tx, true);
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        set_link(&tx, true);
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn one_error_per_outage_and_one_info_when_back() {
        let logs = capture::logs();
        let url = "redis://outage-unit-test:1";
        let mut outage = Outage::new("redis", url.into());
        for _ in 0..5 {
            outage.failed("refused");
        }
        assert_eq!(logs.count(tracing::Level::ERROR, &[url]), 1);
        outage.recovered();
        assert_eq!(logs.count(tracing::Level::INFO, &[url, "reachable again"]), 1);
        outage.failed("refused");
        outage.failed("refused");
        assert_eq!(logs.count(tracing::Level::ERROR, &[url]), 2);
    }
}
