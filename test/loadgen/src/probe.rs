//! The ping probe: one extra idle connection (subscribed to nothing) that
//! sends `pusher:ping` at a fixed interval while the broadcasts run, and
//! times each `pusher:pong`. It shows whether a large fan-out holds the
//! server's workers long enough to delay everybody else's reads and pings.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::hist::Histogram;

/// What the probe saw.
pub struct Probe {
    pub rtt: Histogram,
    /// Pings without a pong within 5 s.
    pub lost: u64,
}

/// Pings every `interval` until `stop` fires; returns the round trips.
pub async fn run(url: String, interval: Duration, mut stop: oneshot::Receiver<()>) -> Result<Probe, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.map_err(|e| format!("probe connect: {e}"))?;
    let mut probe = Probe { rtt: Histogram::default(), lost: 0 };
    let mut next = tokio::time::interval(interval);
    next.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = next.tick() => {}
        }
        ws.send(Message::Text(r#"{"event":"pusher:ping","data":{}}"#.into()))
            .await
            .map_err(|e| format!("probe send: {e}"))?;
        let sent = Instant::now();
        let pong = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(frame) = ws.next().await {
                match frame {
                    Ok(Message::Text(t)) if t.as_str().contains("pusher:pong") => return Ok(()),
                    Ok(Message::Close(c)) => return Err(format!("probe closed: {c:?}")),
                    Ok(_) => {}
                    Err(e) => return Err(format!("probe read: {e}")),
                }
            }
            Err("probe connection ended".to_string())
        })
        .await;
        match pong {
            Ok(Ok(())) => probe.rtt.record(sent.elapsed().as_micros() as u64),
            Ok(Err(e)) => return Err(e),
            Err(_) => probe.lost += 1,
        }
    }
    Ok(probe)
}
