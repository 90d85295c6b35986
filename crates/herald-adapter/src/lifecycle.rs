//! Channel lifecycle notifications (what Pusher webhooks report).
//!
//! The namespace calls these while it holds the channel lock, so they arrive
//! in the order the changes happened: an occupied always precedes its
//! vacated. Implementations must not block — enqueue and return.

/// Receives channel lifecycle changes of one app.
pub trait Lifecycle: Send + Sync + 'static {
    fn channel_occupied(&self, _channel: &str) {}
    fn channel_vacated(&self, _channel: &str) {}
    fn member_added(&self, _channel: &str, _user_id: &str) {}
    fn member_removed(&self, _channel: &str, _user_id: &str) {}
}

/// Ignores every change (apps without webhooks, tests, benchmarks).
pub struct NoLifecycle;

impl Lifecycle for NoLifecycle {}
