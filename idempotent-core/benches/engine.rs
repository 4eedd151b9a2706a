//! The cost of `#[idempotent]`: the wrapped function against the same bare
//! function, on the fresh path (a never-used key: the body runs and its value
//! is stored) and the replay path (a stored key: the value is decoded from the
//! store), on one thread and with two threads contending, with 1 thousand and
//! 1 million keys already stored in a [`MemoryStore`]; and the floor, the same
//! calls through what any idempotent call must do, written by hand
//! (`support/map_floor.rs`).
//!
//! Every figure is the time of one call: `iters` calls run in one loop inside
//! one `block_on` (criterion's `iter_custom`); with two threads, two tasks on a
//! two-worker runtime each make half of the calls, and the wall time is
//! divided by all of them (a throughput figure).
//!
//! Run with `cargo bench -p idempotent-core --bench engine`; the results and
//! the targets they are checked against are in `BENCHMARKS.md`.

use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use idempotent_core::memory::MemoryStore;
use idempotent_core::{Idempotency, idempotent};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

#[path = "support/map_floor.rs"]
mod map_floor;
use map_floor::MapFloor;

/// The keys stored before the small runs.
const SMALL: u64 = 1_000;
/// The keys stored before the large runs (outside test mode).
const LARGE: u64 = 1_000_000;
/// The large store in test mode (`cargo test --benches`, `-- --test`), where
/// each benchmark runs once and only has to work.
const LARGE_IN_TEST_MODE: u64 = 10_000;
/// Fresh calls add keys: a store takes this many before it is replaced by a
/// newly filled one, so that "1 thousand stored" stays 1 000 to 10 000 keys,
/// not the millions a fresh run adds...
const SMALL_ROOM: u64 = 9_000;
/// ... and "1 million stored" stays 1 to 1.4 million keys.
const LARGE_ROOM: u64 = 400_000;
/// A large store is replaced before a sample, outside its timing, when it has
/// room for fewer fresh keys than this (more than a sample or a warm-up round
/// takes): filling it takes seconds, which would otherwise count in the wall
/// time criterion plans its iteration counts with.
const LARGE_ROOM_AHEAD: u64 = 300_000;

/// What the function returns.
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    id: u64,
    amount: u64,
}

/// What the function fails with.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Idempotency(#[from] idempotent_core::Error),
}

/// The body both versions share.
fn receipt(id: u64, amount: u64) -> Result<Receipt, BenchError> {
    Ok(Receipt {
        id: black_box(id),
        amount: black_box(amount),
    })
}

/// The bare function: the baseline.
async fn charge_bare(id: u64, amount: u64) -> Result<Receipt, BenchError> {
    receipt(id, amount)
}

/// The amount charged for `id`: a replay must send the payload of the first
/// call, or the fingerprint differs and the call is refused.
fn amount_for(id: u64) -> u64 {
    100 + id % 900
}

/// A service holding its runtime, as an application would.
struct Payments {
    idem: Idempotency,
    store: MemoryStore,
}

impl Payments {
    /// The same function, wrapped.
    #[idempotent(key = id, runtime = self.idem)]
    async fn charge(&self, id: u64, amount: u64) -> Result<Receipt, BenchError> {
        receipt(id, amount)
    }

    /// A service whose store holds the keys `0..keys`, each completed.
    fn filled(rt: &Runtime, keys: u64) -> Arc<Self> {
        let store = MemoryStore::builder().unbounded().build();
        let payments = Arc::new(Self {
            idem: Idempotency::new(store.clone()),
            store,
        });
        rt.block_on(fresh_calls(&*payments, 0, keys));
        assert_eq!(payments.stored(), keys, "every fill call stores its key");
        payments
    }

    fn stored(&self) -> u64 {
        self.store.len() as u64
    }
}

/// The two functions behind one interface, so both run the same loops.
trait Charge: Send + Sync + 'static {
    fn charge(
        &self,
        id: u64,
        amount: u64,
    ) -> impl Future<Output = Result<Receipt, BenchError>> + Send;
}

/// The bare function.
struct Bare;

impl Charge for Bare {
    async fn charge(&self, id: u64, amount: u64) -> Result<Receipt, BenchError> {
        charge_bare(id, amount).await
    }
}

impl Charge for Payments {
    async fn charge(&self, id: u64, amount: u64) -> Result<Receipt, BenchError> {
        Payments::charge(self, id, amount).await
    }
}

/// Calls with the keys `first..first + calls`, none of them stored yet.
async fn fresh_calls<C: Charge>(charger: &C, first: u64, calls: u64) {
    for id in first..first + calls {
        let receipt = charger.charge(id, amount_for(id)).await;
        black_box(receipt.expect("a fresh call succeeds"));
    }
}

/// Calls with `calls` random keys out of the stored `0..keys`.
async fn replay_calls<C: Charge>(charger: &C, keys: u64, seed: u64, calls: u64) {
    let mut rng = XorShift::new(seed);
    for _ in 0..calls {
        let id = rng.next() % keys;
        let receipt = charger.charge(id, amount_for(id)).await;
        black_box(receipt.expect("a replayed call succeeds"));
    }
}

/// The floor: the same calls through a hand-written map that does the
/// work any idempotent call must (`support/map_floor.rs`): the key, the
/// payload's fingerprint, a lease while the body runs, an expiry, the
/// stored value encoded and decoded.
struct Floor(MapFloor);

impl Floor {
    /// A floor holding the keys `0..keys`, each completed.
    fn filled(rt: &Runtime, keys: u64) -> Arc<Self> {
        let floor = Arc::new(Self(MapFloor::new()));
        rt.block_on(fresh_calls(&*floor, 0, keys));
        assert_eq!(floor.0.len() as u64, keys, "every fill call stores its key");
        floor
    }
}

impl Charge for Floor {
    async fn charge(&self, id: u64, amount: u64) -> Result<Receipt, BenchError> {
        let key = format!("4:idem|0:|24:engine::Payments::charge|{id}");
        let body = async move { receipt(id, amount).expect("a receipt") };
        Ok(self.0.call(&key, &amount, body).await.expect("not refused"))
    }
}

/// xorshift64*: a cheap generator for the replayed keys.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The time of `calls` calls on one thread.
fn one_thread<F: Future<Output = ()>>(rt: &Runtime, calls: F) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        calls.await;
        started.elapsed()
    })
}

/// The wall time of `iters` calls shared by two tasks on two worker threads;
/// `task(index, calls)` builds the calls of task `index` (0 or 1).
fn two_threads<F, Fut>(rt: &Runtime, iters: u64, task: F) -> Duration
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let half = iters / 2;
    let (first, second) = (task(0, half), task(1, iters - half));
    rt.block_on(async move {
        let started = Instant::now();
        let first = tokio::spawn(first);
        let second = tokio::spawn(second);
        first.await.expect("the first task completes");
        second.await.expect("the second task completes");
        started.elapsed()
    })
}

/// The runtimes and the stores, built once and shared by every group.
struct Setup {
    current: Runtime,
    multi: Runtime,
    large_keys: u64,
    small: OnceCell<Arc<Payments>>,
    large: OnceCell<Arc<Payments>>,
    fresh_small: FreshStore<Payments>,
    fresh_large: FreshStore<Payments>,
    small_floor: OnceCell<Arc<Floor>>,
    large_floor: OnceCell<Arc<Floor>>,
    fresh_small_floor: FreshStore<Floor>,
    fresh_large_floor: FreshStore<Floor>,
}

impl Setup {
    fn new() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let test_mode = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
        let large_keys = if test_mode { LARGE_IN_TEST_MODE } else { LARGE };
        Self {
            current: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime"),
            multi: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a two-worker runtime"),
            large_keys,
            small: OnceCell::new(),
            large: OnceCell::new(),
            fresh_small: FreshStore::new(SMALL, SMALL_ROOM, 0, Payments::filled),
            fresh_large: FreshStore::new(
                large_keys,
                LARGE_ROOM,
                LARGE_ROOM_AHEAD,
                Payments::filled,
            ),
            small_floor: OnceCell::new(),
            large_floor: OnceCell::new(),
            fresh_small_floor: FreshStore::new(SMALL, SMALL_ROOM, 0, Floor::filled),
            fresh_large_floor: FreshStore::new(
                large_keys,
                LARGE_ROOM,
                LARGE_ROOM_AHEAD,
                Floor::filled,
            ),
        }
    }

    fn small(&self) -> &Arc<Payments> {
        self.small
            .get_or_init(|| Payments::filled(&self.current, SMALL))
    }

    fn large(&self) -> &Arc<Payments> {
        self.large
            .get_or_init(|| Payments::filled(&self.current, self.large_keys))
    }

    fn small_floor(&self) -> &Arc<Floor> {
        self.small_floor
            .get_or_init(|| Floor::filled(&self.current, SMALL))
    }

    fn large_floor(&self) -> &Arc<Floor> {
        self.large_floor
            .get_or_init(|| Floor::filled(&self.current, self.large_keys))
    }
}

/// A store taking fresh keys, replaced by a newly filled one once it has
/// taken `room` of them, or before a sample once it has less than `ahead` left.
struct FreshStore<T> {
    keys: u64,
    room: u64,
    ahead: u64,
    /// Makes a store holding `keys` keys.
    fill: fn(&Runtime, u64) -> Arc<T>,
    /// The service, and its next never-used key.
    current: RefCell<Option<(Arc<T>, u64)>>,
    /// How many stores were filled.
    filled: Cell<u64>,
}

impl<T> FreshStore<T> {
    fn new(keys: u64, room: u64, ahead: u64, fill: fn(&Runtime, u64) -> Arc<T>) -> Self {
        Self {
            keys,
            room,
            ahead,
            fill,
            current: RefCell::new(None),
            filled: Cell::new(0),
        }
    }

    /// Replaces the store if it has room for fewer than `ahead` fresh keys;
    /// called before each sample, outside its timing.
    fn prepare(&self, rt: &Runtime) {
        self.retire(self.ahead.max(1));
        drop(self.take(rt, 0));
    }

    /// Drops the store if it has room for fewer than `needed` fresh keys.
    fn retire(&self, needed: u64) {
        let mut current = self.current.borrow_mut();
        let end = self.keys + self.room;
        if current
            .as_ref()
            .is_some_and(|(_, next)| end - *next < needed)
        {
            *current = None; // dropped before the next one is filled
        }
    }

    /// Up to `wanted` never-used keys: the service, the first key, and how many.
    fn take(&self, rt: &Runtime, wanted: u64) -> (Arc<T>, u64, u64) {
        self.retire(1);
        let mut current = self.current.borrow_mut();
        let end = self.keys + self.room;
        let (payments, next) = current.get_or_insert_with(|| {
            self.filled.set(self.filled.get() + 1);
            ((self.fill)(rt, self.keys), self.keys)
        });
        let calls = wanted.min(end - *next);
        let first = *next;
        *next += calls;
        (Arc::clone(payments), first, calls)
    }

    /// The time of `iters` fresh calls, `run(service, first key, calls)` timing
    /// each run of calls that one store can take.
    fn time(
        &self,
        rt: &Runtime,
        iters: u64,
        mut run: impl FnMut(Arc<T>, u64, u64) -> Duration,
    ) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let (payments, first, calls) = self.take(rt, left);
            total += run(payments, first, calls);
            left -= calls;
        }
        total
    }
}

/// How to get a service holding one of the stores.
type ServiceOf<T> = fn(&Setup) -> &Arc<T>;

/// The stored-key counts, and the services holding them: ours and the floor.
const STORES: [(&str, ServiceOf<Payments>, ServiceOf<Floor>); 2] = [
    ("1K", Setup::small, Setup::small_floor),
    ("1M", Setup::large, Setup::large_floor),
];

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group
}

/// Replays of random stored keys through `service`, on one thread or two.
fn replay_case<C: Charge>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    setup: &Setup,
    two: bool,
    name: &str,
    service: &Arc<C>,
    keys: u64,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            if !two {
                return one_thread(&setup.current, replay_calls(&**service, keys, iters, iters));
            }
            two_threads(&setup.multi, iters, |task, calls| {
                let service = Arc::clone(service);
                async move { replay_calls(&*service, keys, 2 * iters + task, calls).await }
            })
        });
    });
}

fn replay(c: &mut Criterion, setup: &Setup) {
    for (name, two) in [("replay_1_thread", false), ("replay_2_threads", true)] {
        let mut group = group(c, name);
        replay_case(&mut group, setup, two, "bare", &Arc::new(Bare), LARGE);
        for (label, payments, floor) in STORES {
            let payments = payments(setup);
            let keys = payments.stored();
            let wrapped = format!("wrapped/{label}");
            replay_case(&mut group, setup, two, &wrapped, payments, keys);
            assert_eq!(payments.stored(), keys, "replays store nothing");
            let floor_name = format!("floor/{label}");
            replay_case(&mut group, setup, two, &floor_name, floor(setup), keys);
        }
        group.finish();
    }
}

/// Fresh calls through the services of `store`, on one thread or two.
fn fresh_case<C: Charge>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    setup: &Setup,
    two: bool,
    name: &str,
    store: &FreshStore<C>,
) {
    group.bench_function(name, |b| {
        store.prepare(&setup.current);
        b.iter_custom(|iters| {
            store.time(&setup.current, iters, |service, first, calls| {
                if !two {
                    return one_thread(&setup.current, fresh_calls(&*service, first, calls));
                }
                let half = calls / 2;
                two_threads(&setup.multi, calls, |task, calls| {
                    let service = Arc::clone(&service);
                    async move { fresh_calls(&*service, first + task * half, calls).await }
                })
            })
        });
    });
}

fn fresh(c: &mut Criterion, setup: &Setup) {
    for (name, two) in [("fresh_1_thread", false), ("fresh_2_threads", true)] {
        let mut group = group(c, name);
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| {
                if !two {
                    return one_thread(&setup.current, fresh_calls(&Bare, LARGE, iters));
                }
                two_threads(&setup.multi, iters, |task, calls| {
                    fresh_calls(&Bare, LARGE + task * calls, calls)
                })
            });
        });
        for (label, store, floor) in [
            ("1K", &setup.fresh_small, &setup.fresh_small_floor),
            ("1M", &setup.fresh_large, &setup.fresh_large_floor),
        ] {
            fresh_case(&mut group, setup, two, &format!("wrapped/{label}"), store);
            fresh_case(&mut group, setup, two, &format!("floor/{label}"), floor);
        }
        group.finish();
    }
    for (label, store) in [("1K", &setup.fresh_small), ("1M", &setup.fresh_large)] {
        eprintln!(
            "fresh runs at {label}: {} stores filled, each taking up to {} fresh keys",
            store.filled.get(),
            store.room
        );
    }
}

fn main() {
    let mut setup = Setup::new();
    let mut c = Criterion::default().configure_from_args();
    replay(&mut c, &setup);
    // The replay stores are done with: free their memory.
    setup.small.take();
    setup.large.take();
    setup.small_floor.take();
    setup.large_floor.take();
    fresh(&mut c, &setup);
    c.final_summary();
}
