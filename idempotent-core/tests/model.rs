//! A model-checked property test of the record state machine
//! (`idempotent_core::record`), run against every store.
//!
//! proptest generates sequences of operations over two keys and two payload
//! fingerprints: claims, completions, releases, renewals and clock advances.
//! A fenced call (complete, release, renew) carries the token of some lease
//! acquired earlier in the sequence: the live one, a stale one (released,
//! completed, expired or taken over), one of the other key, or a token no
//! claim ever handed out. A small model keeps, per key, what the store should
//! hold (nothing, a lease in progress, or a completed record) and checks each
//! answer of the store as it comes:
//!
//! - a claim acquires only a key whose record is absent or past its
//!   deadline: a body never runs twice while a completed record or a live
//!   lease exists, the promise the crate rests on;
//! - otherwise it replays exactly the stored bytes for the same payload,
//!   answers in progress (with the lease left as `retry_after`) while the same
//!   payload runs, and key reused for another payload;
//! - `complete`, `release` and `renew` succeed only with the token of the
//!   live lease (and, for `complete`, its fingerprint); anything else is
//!   [`StoreError::LeaseLost`] and changes nothing, so a fenced owner never
//!   overwrites. The model does not change on a refusal, so every later
//!   answer checks that nothing did.
//!
//! Time. The memory store reads tokio's clock, which is paused here, so the
//! model is exact, boundaries included: a lease of 300 ms is over after
//! exactly 300 ms. Redis and PostgreSQL keep their own clocks, so their tests
//! sleep for real, and the model knows each instant only as the span between
//! reading the clock before a call and after it. It expects a record live or
//! expired only when its deadline is more than `REAL_MARGIN` (100 ms) away
//! from the call; nearer, either answer passes and the model follows the
//! store (counted as "too close to call"). The durations keep that rare: leases
//! and retentions of 300 ms or 3.2 s, advances of 500 ms, calls of a few ms.
//!
//! Redis and PostgreSQL are held to the model with one exception, which the
//! `Store` trait allows (`Store::complete`), for a completion sent twice
//! (its first answer lost with a connection): a completion whose
//! fingerprint and response are exactly those of the live completed record
//! already there is acknowledged, whatever its token. The test lets it pass
//! and still checks that it changed nothing.
//!
//! Real stores only: a redis-server started for the test and a PostgreSQL
//! schema of its own (lease mode); a missing service fails the test. No
//! regression files are written (`failure_persistence: None`): a failure
//! prints the shrunk sequence, step by step, with the store's answers. The
//! RNG seed is random on each run, so every run tries new sequences; it is
//! printed with a failure, and `PROPTEST_RNG_SEED` fixes it.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, LeaseToken, StorageKey};
use idempotent_core::{Fingerprint, Store, StoreError};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use tokio::time::Instant;

/// The keys a sequence works on.
const KEYS: usize = 2;

/// The two payloads; a claim or completion picks one by index.
const FINGERPRINTS: [Fingerprint; 2] = [Fingerprint::from_u128(0xA), Fingerprint::from_u128(0xB)];
const FINGERPRINT_NAMES: [&str; 2] = ["A", "B"];

/// How many responses a completion chooses from (see [`response`]).
const RESPONSES: usize = 3;

/// A token no claim ever hands out: the memory store's tokens are a count
/// shifted left by 16 bits, Redis's and PostgreSQL's a random 64-bit base
/// and a count from 1.
const FORGED: LeaseToken = LeaseToken::from_u128(u128::MAX);

/// The responses a completion stores: empty, short text, and binary bytes
/// longer than the memory store keeps inline (1 KiB).
fn response(index: usize) -> Vec<u8> {
    match index {
        0 => Vec::new(),
        1 => b"receipt-1".to_vec(),
        _ => (0..1500_u32).map(|i| (i * 31 % 256) as u8).collect(),
    }
}

const RESPONSE_NAMES: [&str; RESPONSES] = ["r0 (empty)", "r1 (\"receipt-1\")", "r2 (1500 bytes)"];

/// How near a deadline a real server's answer may go either way: its clock
/// and the test's are read at slightly different moments, and rounded to
/// milliseconds.
#[cfg(any(feature = "redis", feature = "postgres"))]
const REAL_MARGIN: Duration = Duration::from_millis(100);

/// How one store is driven.
struct Profile {
    store: &'static str,
    clock: Clock,
    /// The leases a claim or renewal asks for.
    leases: [Duration; 2],
    /// The retentions a completion asks for.
    ttls: [Duration; 2],
    /// The clock advances a sequence may hold.
    advances: &'static [Duration],
    /// The weight of an advance among the operations (claims weigh 4).
    advance_weight: u32,
    /// How far a deadline must be from a call for the model to call it.
    margin: Duration,
    /// How many sequences to run, and how long each is at most.
    cases: u32,
    max_ops: usize,
    /// The most time spent shrinking a failure, in milliseconds.
    max_shrink_ms: u32,
    /// The Redis store acknowledges a completion identical to the completed
    /// record it holds, whatever its token (see the module documentation).
    acknowledges_identical_completions: bool,
}

/// Where time comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// tokio's clock, paused: only the test moves it, so the store and the
    /// model see the very same instants.
    Paused,
    /// The server's clock: the test sleeps.
    #[cfg(any(feature = "redis", feature = "postgres"))]
    Real,
}

/// The memory store, on paused time: exact boundaries (an advance of 300 ms
/// ends a 300 ms lease, one of 299 ms does not), many sequences.
const MEMORY: Profile = Profile {
    store: "memory",
    clock: Clock::Paused,
    leases: [Duration::from_millis(300), Duration::from_millis(1000)],
    ttls: [Duration::from_millis(300), Duration::from_millis(1000)],
    advances: &[
        Duration::from_millis(1),
        Duration::from_millis(299),
        Duration::from_millis(300),
        Duration::from_millis(700),
    ],
    advance_weight: 2,
    margin: Duration::ZERO,
    cases: 256,
    max_ops: 48,
    max_shrink_ms: 60_000,
    acknowledges_identical_completions: false,
};

#[cfg(any(feature = "redis", feature = "postgres"))]
const REAL_ADVANCES: [Duration; 1] = [Duration::from_millis(500)];

/// A store on a server's clock: after `n` advances of 500 ms a call happens
/// at about `n × 500 ms` (plus the few milliseconds the calls take), while
/// deadlines fall at about `m × 500 ms` plus 300 ms or 3.2 s: 200 ms or more
/// from any call, twice [`REAL_MARGIN`].
#[cfg(any(feature = "redis", feature = "postgres"))]
const fn on_a_real_clock(store: &'static str, acknowledges_identical_completions: bool) -> Profile {
    Profile {
        store,
        clock: Clock::Real,
        leases: [Duration::from_millis(300), Duration::from_millis(3200)],
        ttls: [Duration::from_millis(300), Duration::from_millis(3200)],
        advances: &REAL_ADVANCES,
        advance_weight: 1,
        margin: REAL_MARGIN,
        cases: 16,
        max_ops: 32,
        max_shrink_ms: 60_000,
        acknowledges_identical_completions,
    }
}

#[cfg(feature = "redis")]
const REDIS: Profile = on_a_real_clock("redis", true);
#[cfg(feature = "postgres")]
const POSTGRES: Profile = on_a_real_clock("postgres", true);

#[test]
fn the_memory_store_follows_the_model() {
    let tally = run_model(&MEMORY, |ops, tally| {
        // A runtime per sequence with its clock paused from the start, and
        // a store on it: the store's clock starts with the sequence.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async {
            let store = MemoryStore::new();
            check_sequence(&store, &MEMORY, ops, tally).await
        })
    });
    // 256 sequences reach every corner; if they did not, the generator
    // would have stopped testing what it claims to.
    tally.assert_reached(&[
        "acquired a free key",
        "took over an expired record",
        "replayed",
        "in progress",
        "key_reused",
        "completed",
        "released",
        "renewed",
        "refused a stale token of the key",
        "refused a token of another key",
        "refused a forged token",
        "refused the owner whose lease ran out",
        "refused the owner's other fingerprint",
    ]);
}

#[cfg(feature = "redis")]
#[test]
fn the_redis_store_follows_the_model() {
    use idempotent_core::redis::RedisStore;
    use support::redis_server::RedisServer;

    let server = RedisServer::start();
    let runtime = real_runtime();
    let store = runtime
        .block_on(RedisStore::connect(&server.url()))
        .unwrap_or_else(|e| panic!("a Redis store on {}: {e}", server.url()));
    run_model(&REDIS, |ops, tally| {
        runtime.block_on(check_sequence(&store, &REDIS, ops, tally))
    });
    runtime.block_on(async move { drop(store) });
}

#[cfg(feature = "postgres")]
#[test]
fn the_postgres_store_follows_the_model() {
    use support::postgres_schema::Schema;

    let runtime = real_runtime();
    let schema = runtime.block_on(Schema::create("model"));
    let store = runtime.block_on(schema.store());
    run_model(&POSTGRES, |ops, tally| {
        runtime.block_on(check_sequence(&store, &POSTGRES, ops, tally))
    });
    runtime.block_on(async move { drop(store) });
}

/// A runtime whose clock is the machine's, for the stores on a server.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn real_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `profile.cases` generated sequences through `check` and fails with
/// the shrunk sequence if one departs from the model; returns what was
/// exercised.
fn run_model(
    profile: &Profile,
    check: impl Fn(&[Op], &Tally) -> Result<(), TestCaseError>,
) -> Tally {
    // The default RNG, seeded at random on each run (PROPTEST_RNG_SEED
    // fixes it): the seed is chosen here so that a failure can print it.
    let seed = match Config::default().rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => RandomState::new().hash_one(profile.store),
    };
    let config = Config {
        cases: profile.cases,
        // Nothing written into the repository: a failure prints its
        // shrunk sequence and the seed instead.
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_time: profile.max_shrink_ms,
        ..Config::default()
    };
    let tally = Tally::default();
    let mut runner = TestRunner::new(config);
    match runner.run(&operations(profile), |ops| check(&ops, &tally)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!(
            "the {} store departed from the model (PROPTEST_RNG_SEED={seed} generates \
             the same sequences); the shrunk sequence:\n{reason}",
            profile.store
        ),
        Err(TestError::Abort(reason)) => {
            panic!("{}: proptest gave up: {reason}", profile.store)
        }
    }
    eprintln!(
        "{} store, {} sequences: {tally}",
        profile.store, profile.cases
    );
    tally
}

// ---------------------------------------------------------------------------
// The operations and their generator.

/// One step of a sequence. Indices pick from the profile's durations, the
/// fingerprints and the responses.
#[derive(Clone, Debug)]
enum Op {
    Claim {
        key: usize,
        fingerprint: usize,
        lease: usize,
    },
    Complete {
        token: TokenChoice,
        /// `None`: the key of the lease the token belongs to.
        key: Option<usize>,
        /// `None`: the fingerprint the lease was claimed with.
        fingerprint: Option<usize>,
        response: usize,
        ttl: usize,
    },
    Release {
        token: TokenChoice,
        key: Option<usize>,
    },
    Renew {
        token: TokenChoice,
        key: Option<usize>,
        lease: usize,
    },
    Advance {
        by: usize,
    },
}

/// Which token a fenced call carries, among the leases acquired so far.
#[derive(Clone, Debug)]
enum TokenChoice {
    /// The lease acquired last (most often the live one).
    Latest,
    /// Any lease acquired so far, stale ones included.
    Any(Index),
    /// A token no claim handed out.
    Forged,
}

fn operations(profile: &Profile) -> impl Strategy<Value = Vec<Op>> + use<> {
    let token = || {
        prop_oneof![
            3 => Just(TokenChoice::Latest),
            3 => any::<Index>().prop_map(TokenChoice::Any),
            1 => Just(TokenChoice::Forged),
        ]
    };
    let key = || prop_oneof![4 => Just(None), 1 => (0..KEYS).prop_map(Some)];
    let fingerprint = prop_oneof![4 => Just(None), 1 => (0..FINGERPRINTS.len()).prop_map(Some)];
    let op = prop_oneof![
        4 => (0..KEYS, 0..FINGERPRINTS.len(), 0..2_usize)
            .prop_map(|(key, fingerprint, lease)| Op::Claim { key, fingerprint, lease }),
        3 => (token(), key(), fingerprint, 0..RESPONSES, 0..2_usize).prop_map(
            |(token, key, fingerprint, response, ttl)| Op::Complete {
                token,
                key,
                fingerprint,
                response,
                ttl,
            }
        ),
        1 => (token(), key()).prop_map(|(token, key)| Op::Release { token, key }),
        2 => (token(), key(), 0..2_usize)
            .prop_map(|(token, key, lease)| Op::Renew { token, key, lease }),
        profile.advance_weight => (0..profile.advances.len()).prop_map(|by| Op::Advance { by }),
    ];
    proptest::collection::vec(op, 1..=profile.max_ops)
}

// ---------------------------------------------------------------------------
// Running a sequence against a store and the model side by side.

/// Numbers each sequence, so that sequences on a shared server never share keys.
static SEQUENCES: AtomicU64 = AtomicU64::new(0);

async fn check_sequence<S: Store + ?Sized>(
    store: &S,
    profile: &Profile,
    ops: &[Op],
    tally: &Tally,
) -> Result<(), TestCaseError> {
    let sequence = SEQUENCES.fetch_add(1, Ordering::Relaxed);
    let keys: Vec<StorageKey> = (0..KEYS)
        .map(|k| {
            let id = format!("seq{sequence}-k{k}")
                .parse()
                .expect("a valid idempotency key");
            StorageKey::new("model", "", profile.store, &id)
        })
        .collect();
    let mut model = Model::new(profile, tally);
    let start = Instant::now();
    let elapsed = || start.elapsed();
    for op in ops {
        let before = elapsed();
        match *op {
            Op::Claim {
                key,
                fingerprint,
                lease,
            } => {
                let lease = profile.leases[lease];
                let answer = store
                    .claim(&keys[key], FINGERPRINTS[fingerprint], lease)
                    .await;
                let call = Span::between(before, elapsed());
                model.claim(key, fingerprint, lease, call, answer)?;
            }
            Op::Complete {
                ref token,
                key,
                fingerprint,
                response: response_index,
                ttl,
            } => {
                let (grant, key) = model.resolve(token, key);
                let fingerprint = fingerprint
                    .or(grant.map(|g| model.grants[g].fingerprint))
                    .unwrap_or(0);
                let kind = Fenced::Complete {
                    fingerprint,
                    response: response_index,
                    ttl: profile.ttls[ttl],
                };
                let answer = store
                    .complete(
                        &keys[key],
                        model.token(grant),
                        FINGERPRINTS[fingerprint],
                        &response(response_index),
                        profile.ttls[ttl],
                    )
                    .await;
                let call = Span::between(before, elapsed());
                model.fenced(key, grant, kind, call, answer)?;
            }
            Op::Release { ref token, key } => {
                let (grant, key) = model.resolve(token, key);
                let answer = store.release(&keys[key], model.token(grant)).await;
                let call = Span::between(before, elapsed());
                model.fenced(key, grant, Fenced::Release, call, answer)?;
            }
            Op::Renew {
                ref token,
                key,
                lease,
            } => {
                let (grant, key) = model.resolve(token, key);
                let lease = profile.leases[lease];
                let answer = store.renew(&keys[key], model.token(grant), lease).await;
                let call = Span::between(before, elapsed());
                model.fenced(key, grant, Fenced::Renew { lease }, call, answer)?;
            }
            Op::Advance { by } => {
                let by = profile.advances[by];
                match profile.clock {
                    Clock::Paused => tokio::time::advance(by).await,
                    #[cfg(any(feature = "redis", feature = "postgres"))]
                    Clock::Real => tokio::time::sleep(by).await,
                }
                let now = elapsed();
                model.log(
                    Span::between(now, now),
                    format!("advance {by:?}"),
                    String::new(),
                );
            }
        }
    }
    tally.count("sequences");
    Ok(())
}

/// An instant as the test knows it: at or after `earliest` and at or
/// before `latest`, from the start of the sequence. On paused time both
/// are the same.
#[derive(Clone, Copy, Debug)]
struct Span {
    earliest: Duration,
    latest: Duration,
}

impl Span {
    fn between(earliest: Duration, latest: Duration) -> Self {
        Self { earliest, latest }
    }

    fn after(self, duration: Duration) -> Self {
        Self {
            earliest: self.earliest + duration,
            latest: self.latest + duration,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if self.earliest == self.latest {
            write!(f, "{:.0}ms", ms(self.earliest))
        } else {
            write!(f, "{:.1}..{:.1}ms", ms(self.earliest), ms(self.latest))
        }
    }
}

/// Whether a deadline has passed at a call, as far as the test can tell.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Liveness {
    Live,
    Expired,
    /// Within the margin: the store may answer either way.
    TooCloseToCall,
}

/// A record lives while its deadline is after "now" (`record::Record::is_live`).
fn liveness(deadline: Span, call: Span, margin: Duration) -> Liveness {
    if deadline.earliest > call.latest + margin {
        Liveness::Live
    } else if deadline.latest + margin <= call.earliest {
        Liveness::Expired
    } else {
        Liveness::TooCloseToCall
    }
}

/// A lease some claim acquired in this sequence.
#[derive(Clone, Copy, Debug)]
struct Grant {
    key: usize,
    fingerprint: usize,
    token: LeaseToken,
}

/// What the model says a key holds (an expired record is kept: the model
/// decides liveness at each call).
#[derive(Clone, Debug)]
enum Held {
    InProgress {
        /// Index into [`Model::grants`].
        grant: usize,
        fingerprint: usize,
        deadline: Span,
    },
    Completed {
        fingerprint: usize,
        response: usize,
        deadline: Span,
    },
}

impl Held {
    fn deadline(&self) -> Span {
        match *self {
            Self::InProgress { deadline, .. } | Self::Completed { deadline, .. } => deadline,
        }
    }

    fn deadline_mut(&mut self) -> &mut Span {
        match self {
            Self::InProgress { deadline, .. } | Self::Completed { deadline, .. } => deadline,
        }
    }

    fn fingerprint(&self) -> usize {
        match *self {
            Self::InProgress { fingerprint, .. } | Self::Completed { fingerprint, .. } => {
                fingerprint
            }
        }
    }
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InProgress {
                grant,
                fingerprint,
                deadline,
            } => write!(
                f,
                "in progress under lease #{grant}, fingerprint {}, until {deadline}",
                FINGERPRINT_NAMES[fingerprint]
            ),
            Self::Completed {
                fingerprint,
                response,
                deadline,
            } => write!(
                f,
                "completed with {}, fingerprint {}, until {deadline}",
                RESPONSE_NAMES[response], FINGERPRINT_NAMES[fingerprint]
            ),
        }
    }
}

/// The answer a claim must get from a live record.
enum LiveAnswer {
    Replay(usize),
    InProgress(Span),
    KeyReused,
}

/// A fenced call, with what it would write.
#[derive(Clone, Copy)]
enum Fenced {
    Complete {
        fingerprint: usize,
        response: usize,
        ttl: Duration,
    },
    Release,
    Renew {
        lease: Duration,
    },
}

/// What a fenced call must get.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fence {
    Pass,
    Refuse,
    /// The live owner's lease ends too close to the call to tell.
    Either,
}

struct Model<'a> {
    profile: &'a Profile,
    tally: &'a Tally,
    records: [Option<Held>; KEYS],
    grants: Vec<Grant>,
    /// One line per step so far, for the failure message.
    trace: String,
    steps: usize,
}

impl<'a> Model<'a> {
    fn new(profile: &'a Profile, tally: &'a Tally) -> Self {
        Self {
            profile,
            tally,
            records: [None, None],
            grants: Vec::new(),
            trace: String::new(),
            steps: 0,
        }
    }

    /// The lease a token choice names (`None`: a forged token, also chosen
    /// while no lease exists) and the key the call goes to.
    fn resolve(&self, choice: &TokenChoice, key: Option<usize>) -> (Option<usize>, usize) {
        let grant = match choice {
            TokenChoice::Latest => self.grants.len().checked_sub(1),
            TokenChoice::Any(index) if !self.grants.is_empty() => {
                Some(index.index(self.grants.len()))
            }
            TokenChoice::Any(_) | TokenChoice::Forged => None,
        };
        let key = key.or(grant.map(|g| self.grants[g].key)).unwrap_or(0);
        (grant, key)
    }

    fn token(&self, grant: Option<usize>) -> LeaseToken {
        grant.map_or(FORGED, |g| self.grants[g].token)
    }

    fn token_name(&self, grant: Option<usize>) -> String {
        match grant {
            Some(g) => format!(
                "lease #{g} (k{}, {})",
                self.grants[g].key, FINGERPRINT_NAMES[self.grants[g].fingerprint]
            ),
            None => "a forged token".to_owned(),
        }
    }

    fn log(&mut self, call: Span, what: String, answer: String) {
        self.steps += 1;
        self.trace
            .push_str(&format!("{:>4}. @{call} {what}", self.steps));
        if !answer.is_empty() {
            self.trace.push_str(&format!(" -> {answer}"));
        }
        self.trace.push('\n');
    }

    /// Logs the failing step and says what went wrong, with the sequence so far.
    fn fail(&mut self, call: Span, what: String, answer: String, problem: String) -> TestCaseError {
        self.log(call, what, answer);
        TestCaseError::fail(format!("{}      ^ {problem}", self.trace))
    }

    fn describe(&self, key: usize) -> String {
        match &self.records[key] {
            Some(held) => format!("k{key} is {held}"),
            None => format!("k{key} holds nothing"),
        }
    }

    fn claim(
        &mut self,
        key: usize,
        fingerprint: usize,
        lease: Duration,
        call: Span,
        answer: Result<ClaimOutcome, StoreError>,
    ) -> Result<(), TestCaseError> {
        let what = format!(
            "claim(k{key}, {}, lease {lease:?})",
            FINGERPRINT_NAMES[fingerprint]
        );
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let problem = format!("the store failed: {error}");
                return Err(self.fail(call, what, "error".to_owned(), problem));
            }
        };
        let margin = self.profile.margin;
        let expected = self.records[key].as_ref().and_then(|held| {
            let live = liveness(held.deadline(), call, margin);
            let answer = if held.fingerprint() != fingerprint {
                LiveAnswer::KeyReused
            } else {
                match *held {
                    Held::InProgress { deadline, .. } => LiveAnswer::InProgress(deadline),
                    Held::Completed { response, .. } => LiveAnswer::Replay(response),
                }
            };
            (live != Liveness::Expired).then_some((answer, live))
        });
        let before = self.describe(key);
        match answer {
            ClaimOutcome::Acquired(acquired) => {
                let grant = self.grants.len();
                let said = format!("Acquired lease #{grant}");
                if let Some((_, Liveness::Live)) = expected {
                    let problem = format!(
                        "a second body would run: {before}, and a claim must not acquire \
                         while a completed record or a live lease exists"
                    );
                    return Err(self.fail(call, what, said, problem));
                }
                if acquired.duration != lease {
                    let problem = format!("the lease granted is {:?}", acquired.duration);
                    return Err(self.fail(call, what, said, problem));
                }
                if let Some(earlier) = self.grants.iter().position(|g| g.token == acquired.token) {
                    let problem = format!("lease #{earlier} had the same token");
                    return Err(self.fail(call, what, said, problem));
                }
                let event = match (&self.records[key], expected) {
                    (_, Some(_)) => "acquired a deadline too close to call",
                    (Some(_), None) => "took over an expired record",
                    (None, None) => "acquired a free key",
                };
                self.tally.count(event);
                self.grants.push(Grant {
                    key,
                    fingerprint,
                    token: acquired.token,
                });
                self.records[key] = Some(Held::InProgress {
                    grant,
                    fingerprint,
                    deadline: call.after(lease),
                });
                self.log(call, what, said);
                Ok(())
            }
            other => {
                let said = describe_claim(&other);
                let Some((expected, live)) = expected else {
                    let problem = format!("expected Acquired: {before}, free at {call}");
                    return Err(self.fail(call, what, said, problem));
                };
                let right = match (&expected, &other) {
                    (LiveAnswer::Replay(index), ClaimOutcome::Completed(bytes)) => {
                        **bytes == *response(*index)
                    }
                    (
                        LiveAnswer::InProgress(deadline),
                        ClaimOutcome::InProgress { retry_after },
                    ) => {
                        // The lease left, as far as the test can tell.
                        let most = deadline.latest.saturating_sub(call.earliest) + margin;
                        let least = deadline.earliest.saturating_sub(call.latest + margin);
                        (least..=most).contains(retry_after)
                    }
                    (LiveAnswer::KeyReused, ClaimOutcome::KeyReused) => true,
                    _ => false,
                };
                if !right {
                    let wanted = match expected {
                        LiveAnswer::Replay(index) => {
                            format!("Completed({})", RESPONSE_NAMES[index])
                        }
                        LiveAnswer::InProgress(deadline) => {
                            format!("InProgress with the lease left until {deadline}")
                        }
                        LiveAnswer::KeyReused => "KeyReused".to_owned(),
                    };
                    let problem = format!("expected {wanted}: {before}");
                    return Err(self.fail(call, what, said, problem));
                }
                self.tally.count(match expected {
                    LiveAnswer::Replay(_) => "replayed",
                    LiveAnswer::InProgress(_) => "in progress",
                    LiveAnswer::KeyReused => "key_reused",
                });
                if live == Liveness::TooCloseToCall {
                    // The store saw the record live during the call.
                    self.tally.count("answered a deadline too close to call");
                    if let Some(held) = &mut self.records[key] {
                        let deadline = held.deadline_mut();
                        deadline.earliest = deadline.earliest.max(call.earliest);
                    }
                }
                self.log(call, what, said);
                Ok(())
            }
        }
    }

    fn fenced(
        &mut self,
        key: usize,
        grant: Option<usize>,
        kind: Fenced,
        call: Span,
        answer: Result<(), StoreError>,
    ) -> Result<(), TestCaseError> {
        let token = self.token_name(grant);
        let what = match kind {
            Fenced::Complete {
                fingerprint,
                response,
                ttl,
            } => format!(
                "complete(k{key}, {token}, {}, {}, ttl {ttl:?})",
                FINGERPRINT_NAMES[fingerprint], RESPONSE_NAMES[response]
            ),
            Fenced::Release => format!("release(k{key}, {token})"),
            Fenced::Renew { lease } => format!("renew(k{key}, {token}, lease {lease:?})"),
        };
        let margin = self.profile.margin;
        // The live owner passes the fence; everyone else is refused.
        let (fence, refusal) = match &self.records[key] {
            Some(Held::InProgress {
                grant: owner,
                fingerprint: claimed,
                deadline,
            }) if Some(*owner) == grant => match (kind, liveness(*deadline, call, margin)) {
                (Fenced::Complete { fingerprint, .. }, _) if fingerprint != *claimed => {
                    (Fence::Refuse, "refused the owner's other fingerprint")
                }
                (_, Liveness::Live) => (Fence::Pass, ""),
                (_, Liveness::Expired) => (Fence::Refuse, "refused the owner whose lease ran out"),
                (_, Liveness::TooCloseToCall) => (Fence::Either, ""),
            },
            _ => match grant {
                None => (Fence::Refuse, "refused a forged token"),
                Some(g) if self.grants[g].key != key => {
                    (Fence::Refuse, "refused a token of another key")
                }
                Some(_) => (Fence::Refuse, "refused a stale token of the key"),
            },
        };
        // Redis's documented exception: see the module documentation.
        let identical_completion = match (kind, &self.records[key]) {
            (
                Fenced::Complete {
                    fingerprint,
                    response,
                    ..
                },
                Some(
                    held @ Held::Completed {
                        fingerprint: stored_fingerprint,
                        response: stored,
                        ..
                    },
                ),
            ) => {
                fingerprint == *stored_fingerprint
                    && response == *stored
                    && liveness(held.deadline(), call, margin) != Liveness::Expired
            }
            _ => false,
        };
        let before = self.describe(key);
        match answer {
            Ok(()) if fence != Fence::Refuse => {
                self.records[key] = match (kind, self.records[key].take()) {
                    (
                        Fenced::Complete {
                            fingerprint,
                            response,
                            ttl,
                        },
                        _,
                    ) => Some(Held::Completed {
                        fingerprint,
                        response,
                        deadline: call.after(ttl),
                    }),
                    (Fenced::Release, _) => None,
                    (Fenced::Renew { lease }, Some(mut held)) => {
                        *held.deadline_mut() = call.after(lease);
                        Some(held)
                    }
                    (Fenced::Renew { .. }, None) => unreachable!("only a held lease passes"),
                };
                self.tally.count(match kind {
                    Fenced::Complete { .. } => "completed",
                    Fenced::Release => "released",
                    Fenced::Renew { .. } => "renewed",
                });
                if fence == Fence::Either {
                    self.tally.count("passed a deadline too close to call");
                }
                self.log(call, what, "Ok".to_owned());
                Ok(())
            }
            Ok(()) if identical_completion && self.profile.acknowledges_identical_completions => {
                self.tally
                    .count("acknowledged an identical completion (the trait's exception)");
                self.log(call, what, "Ok (identical to the stored record)".to_owned());
                Ok(())
            }
            Ok(()) => {
                let problem = format!(
                    "expected LeaseLost: {token} does not hold the live lease ({before}); \
                     a fenced call must change nothing"
                );
                Err(self.fail(call, what, "Ok".to_owned(), problem))
            }
            Err(StoreError::LeaseLost) if fence != Fence::Pass => {
                if fence == Fence::Either {
                    // The store saw the lease over during the call.
                    self.tally.count("refused a deadline too close to call");
                    if let Some(held) = &mut self.records[key] {
                        let deadline = held.deadline_mut();
                        deadline.latest = deadline.latest.min(call.latest);
                    }
                } else {
                    self.tally.count(refusal);
                }
                self.log(call, what, "LeaseLost".to_owned());
                Ok(())
            }
            Err(StoreError::LeaseLost) => {
                let problem = format!("expected Ok: {token} holds the live lease ({before})");
                Err(self.fail(call, what, "LeaseLost".to_owned(), problem))
            }
            Err(error) => {
                let problem = format!("the store failed: {error}");
                Err(self.fail(call, what, "error".to_owned(), problem))
            }
        }
    }
}

fn describe_claim(outcome: &ClaimOutcome) -> String {
    match outcome {
        ClaimOutcome::Completed(bytes) => match (0..RESPONSES).find(|&i| **bytes == *response(i)) {
            Some(index) => format!("Completed({})", RESPONSE_NAMES[index]),
            None => format!("Completed({} unknown bytes)", bytes.len()),
        },
        ClaimOutcome::InProgress { retry_after } => {
            format!("InProgress(retry after {retry_after:?})")
        }
        other => format!("{other:?}"),
    }
}

/// How often each kind of step happened over a whole run (shrinking included).
#[derive(Default)]
struct Tally(RefCell<BTreeMap<&'static str, u64>>);

impl Tally {
    fn count(&self, event: &'static str) {
        *self.0.borrow_mut().entry(event).or_default() += 1;
    }

    /// Fails unless every one of `events` happened at least once.
    fn assert_reached(&self, events: &[&str]) {
        let counts = self.0.borrow();
        let missing: Vec<&str> = events
            .iter()
            .copied()
            .filter(|event| !counts.contains_key(event))
            .collect();
        assert!(
            missing.is_empty(),
            "the generated sequences never reached {missing:?}; reached: {self}"
        );
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.borrow().iter()).finish()
    }
}
