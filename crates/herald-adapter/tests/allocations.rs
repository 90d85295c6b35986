//! A regression guard for the per-recipient cost of a broadcast: one
//! broadcast to N local subscribers must allocate O(1), the same for 5,000
//! subscribers as for 20,000 (the frame is encoded once and shared; a
//! delivery is a write of the shared bytes). Counted with a global
//! allocator, so this file is its own test binary with one test in it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herald_adapter::{text_frame, Connection, Frame, Namespace, NoLifecycle, Outlet, Pushed, SingleNode, Subscription};
use herald_metrics::{AppMetrics, Metrics};
use herald_protocol::message::{self, EventData};
use herald_protocol::SocketId;

struct Counting;

thread_local! {
    /// Allocations made by this thread (the test's, which runs the
    /// current-thread runtime): the harness's own threads are not counted.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A socket that takes every write: counts what it was given, allocates
/// nothing (as the server's enqueue does once its queue has capacity).
#[derive(Default)]
struct Taken(AtomicUsize);

impl Outlet for Taken {
    fn push(&self, frame: &Frame) -> Pushed {
        self.0.fetch_add(frame.wire().len(), Ordering::Relaxed);
        Pushed::Accepted
    }
}

struct Setup {
    ns: Namespace,
    outlet: Arc<Taken>,
    _conns: Vec<Arc<Connection>>,
}

fn setup(metrics: AppMetrics, subscribers: usize) -> Setup {
    let ns = Namespace::new("alloc", metrics, Arc::new(NoLifecycle), Arc::new(SingleNode));
    let outlet = Arc::new(Taken::default());
    let conns = (0..subscribers)
        .map(|i| {
            let conn = Connection::with_outlet(SocketId { major: 1, minor: i as u64 }, outlet.clone());
            let request = Subscription { channel: "feed".into(), member: None, max_members: 100, is_cache: false };
            ns.subscribe(&conn, &request, false).unwrap();
            conn
        })
        .collect();
    // Count the broadcasts only, not the `subscription_succeeded` frames.
    outlet.0.store(0, Ordering::Relaxed);
    Setup { ns, outlet, _conns: conns }
}

/// Allocations made by `rounds` broadcasts (serialize, encode, fan out),
/// after one warm-up broadcast.
fn allocations_of_broadcasts(runtime: &tokio::runtime::Runtime, s: &Setup, rounds: usize) -> usize {
    let payload = "x".repeat(100);
    // One `block_on` for all: the runtime's own bookkeeping for a task
    // that yields (a large fan-out gives the worker back) is set up once.
    runtime.block_on(async {
        let broadcast = || async {
            let frame = text_frame(message::event("tick", Some("feed"), EventData::Text(&payload), None));
            s.ns.fan_out("feed", &frame, None, false).await
        };
        broadcast().await;
        let before = allocations();
        for _ in 0..rounds {
            broadcast().await;
        }
        allocations() - before
    })
}

#[test]
fn one_broadcast_allocates_the_same_for_5_000_as_for_20_000_subscribers() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let small = setup(AppMetrics::noop(), 5_000);
    let large = setup(AppMetrics::noop(), 20_000);
    let rounds = 5;
    // A first measured pass warms what is set up once per process. (Both
    // sizes are large enough that every fan-out gives the worker back, as
    // the runtime's bookkeeping for that is not per recipient either.)
    allocations_of_broadcasts(&runtime, &small, rounds);
    let for_small = allocations_of_broadcasts(&runtime, &small, rounds);
    let for_large = allocations_of_broadcasts(&runtime, &large, rounds);
    assert_eq!(
        for_large, for_small,
        "{rounds} broadcasts allocated {for_large} times to 20,000 subscribers, {for_small} times to 5,000"
    );
    assert!(for_small <= 4 * rounds, "{for_small} allocations for {rounds} broadcasts");
    // Every recipient was given the whole frame (a 4-byte header for a
    // payload of 126..65,535 bytes, then the JSON) each time: the warm-up
    // and the measured rounds.
    let json_len = message::event("tick", Some("feed"), EventData::Text(&"x".repeat(100)), None).len();
    assert!((126..65_536).contains(&json_len));
    assert_eq!(large.outlet.0.load(Ordering::Relaxed), 20_000 * (rounds + 1) * (4 + json_len));

    // With the node's real metrics the count stays independent of N too.
    let registry = Metrics::new("alloc");
    let metered = setup(registry.app("alloc"), 10_000);
    let for_metered = allocations_of_broadcasts(&runtime, &metered, rounds);
    assert!(for_metered <= for_small + 2 * rounds, "{for_metered} allocations with metrics on");
}
