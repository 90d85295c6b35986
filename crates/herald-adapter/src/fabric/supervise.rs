//! What a transport's background task and its `publish` share, and the
//! reconnect loop of the transports that build their connections themselves
//! (Redis and Redis Cluster): connect within the timeout, report the link up,
//! watch until something breaks, report it down, back off, start over.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::fabric::backoff::{set_link, sleep_unless_stopped, Backoff, Outage};
use crate::fabric::FabricError;

/// The state a transport's background task shares with `publish`: the link,
/// what publishes while it is up (`L`), and why it is down.
pub(crate) struct Shared<L> {
    pub(crate) link: watch::Sender<bool>,
    /// What `publish` uses, while connected.
    pub(crate) live: RwLock<Option<L>>,
    /// Why the link is down (for [`FabricError::Down`]).
    pub(crate) reason: Mutex<String>,
}

impl<L: Clone> Shared<L> {
    pub(crate) fn new(link: watch::Sender<bool>) -> Self {
        Self { link, live: RwLock::new(None), reason: Mutex::new("not connected yet".into()) }
    }

    /// What to publish with, only while the link is up.
    pub(crate) fn live(&self) -> Option<L> {
        if *self.link.borrow() {
            self.live.read().clone()
        } else {
            None
        }
    }

    /// The error of a publish while the link is down.
    pub(crate) fn down(&self, url: &str) -> FabricError {
        FabricError::Down { url: url.to_owned(), reason: self.reason.lock().clone() }
    }

    /// Records why the link is down and logs it (once per outage).
    pub(crate) fn failed(&self, outage: &mut Outage, reason: String) {
        outage.failed(&reason);
        *self.reason.lock() = reason;
    }

    /// The transport stopped: the link stays down for good.
    pub(crate) fn stopped(&self) {
        set_link(&self.link, false);
        *self.reason.lock() = "transport stopped".into();
        self.live.write().take();
    }
}

/// How one transport connects and watches its connections, for [`supervise`].
pub(crate) trait Connector: Sync {
    /// One generation of connections, dropped when the link goes down.
    type Conns: Send;
    /// What `publish` uses while the link is up.
    type Live: Clone + Send + Sync;
    type Error: Display + Send;

    /// Connects and subscribes everything (bounded by the caller's timeout).
    fn connect(&self) -> impl Future<Output = Result<Self::Conns, Self::Error>> + Send;

    /// What `publish` uses from `conns`.
    fn live(conns: &Self::Conns) -> Self::Live;

    /// Waits until a connection breaks (`Some(reason)`) or the transport
    /// stops (`None`).
    fn watch(&self, conns: &mut Self::Conns) -> impl Future<Output = Option<String>> + Send;
}

/// The reconnect loop: until `stop`, connect (within `timeout`), publish
/// the live connection and raise the link, watch, lower the link, back off
/// (100 ms doubling to 2 s), repeat. One error is logged per outage.
pub(crate) async fn supervise<C: Connector>(
    kind: &'static str,
    url: String,
    timeout: Duration,
    stop: &CancellationToken,
    shared: &Shared<C::Live>,
    connector: &C,
) {
    let mut backoff = Backoff::new();
    let mut outage = Outage::new(kind, url);
    while !stop.is_cancelled() {
        let attempt = tokio::select! {
            _ = stop.cancelled() => break,
            r = tokio::time::timeout(timeout, connector.connect()) => r,
        };
        let reason = match attempt {
            Ok(Ok(mut conns)) => {
                *shared.live.write() = Some(C::live(&conns));
                outage.recovered();
                set_link(&shared.link, true);
                backoff.reset();
                let reason = connector.watch(&mut conns).await;
                set_link(&shared.link, false);
                *shared.live.write() = None;
                match reason {
                    Some(reason) => reason,
                    None => break,
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        shared.failed(&mut outage, reason);
        if !sleep_unless_stopped(backoff.next_delay(), stop).await {
            break;
        }
    }
    shared.stopped();
}
