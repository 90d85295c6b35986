//! Scatter-gather with a deadline: a question goes to every node on the
//! control subject, each live peer answers on this node's own subject, and
//! the asker waits until every peer it knew of has answered or the request
//! timeout passes. Peers that miss the deadline are left out of the answer,
//! logged and counted — a REST call never hangs on a stalled node.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::envelope::Answer;
use crate::replica::NodeId;

struct Pending {
    waiting: HashSet<NodeId>,
    answers: Vec<(Answer, Bytes)>,
    done: Option<oneshot::Sender<()>>,
}

/// Questions in flight.
#[derive(Default)]
pub(super) struct Survey {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

/// A question registered but not yet answered.
pub(super) struct Asked {
    pub id: u64,
    done: oneshot::Receiver<()>,
}

/// What came back.
pub(super) struct Gathered {
    pub answers: Vec<(Answer, Bytes)>,
    /// Peers that did not answer in time.
    pub missing: Vec<NodeId>,
}

impl Survey {
    /// Registers a question that `peers` must answer.
    pub fn register(&self, peers: Vec<NodeId>) -> Asked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let pending = Pending { waiting: peers.into_iter().collect(), answers: Vec::new(), done: Some(tx) };
        self.pending.lock().insert(id, pending);
        Asked { id, done: rx }
    }

    /// Records `node`'s answer to question `id` (late or unknown answers are ignored).
    pub fn answer(&self, id: u64, node: &NodeId, answer: Answer, payload: Bytes) {
        let mut pending = self.pending.lock();
        let Some(p) = pending.get_mut(&id) else { return };
        if p.waiting.remove(node) {
            p.answers.push((answer, payload));
            if p.waiting.is_empty() {
                if let Some(done) = p.done.take() {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Waits for every answer or the deadline, whichever comes first.
    pub async fn gather(&self, asked: Asked, deadline: std::time::Duration) -> Gathered {
        let _ = tokio::time::timeout(deadline, asked.done).await;
        self.take(asked.id)
    }

    /// Abandons a question (its publish failed) and returns what it has.
    pub fn take(&self, id: u64) -> Gathered {
        let p = self.pending.lock().remove(&id);
        match p {
            Some(p) => Gathered { answers: p.answers, missing: p.waiting.into_iter().collect() },
            None => Gathered { answers: Vec::new(), missing: Vec::new() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn answers_complete_the_question_early() {
        let s = Survey::default();
        let (a, b): (NodeId, NodeId) = (Arc::from("a"), Arc::from("b"));
        let asked = s.register(vec![a.clone(), b.clone()]);
        let id = asked.id;
        s.answer(id, &a, Answer::Count { count: 1 }, Bytes::new());
        s.answer(id, &a, Answer::Count { count: 9 }, Bytes::new());
        s.answer(id, &b, Answer::Count { count: 2 }, Bytes::new());
        let started = std::time::Instant::now();
        let g = s.gather(asked, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(g.answers.len(), 2);
        assert!(g.missing.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_left_out_at_the_deadline() {
        let s = Survey::default();
        let (a, b): (NodeId, NodeId) = (Arc::from("a"), Arc::from("b"));
        let asked = s.register(vec![a.clone(), b.clone()]);
        s.answer(asked.id, &a, Answer::Count { count: 1 }, Bytes::new());
        let g = s.gather(asked, Duration::from_millis(200)).await;
        assert_eq!(g.answers, vec![(Answer::Count { count: 1 }, Bytes::new())]);
        assert_eq!(g.missing, vec![b]);
    }
}
