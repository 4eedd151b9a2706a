//! The Lua scripts of the Redis store: the fenced transitions (complete,
//! release, renew, record a step), the waiter's mark, and the in-progress
//! look.

use redis::Script;

/// Shared prefix of the fenced scripts: the live lease must carry `ARGV[1]`
/// (in a record of this layout: a lease this store handed out is in one).
macro_rules! fenced {
    ($body:literal) => {
        concat!(
            r"
local v = redis.call('GET', KEYS[1])
if not v or string.len(v) < 34 or string.sub(v, 1, 2) ~= '\2P' or string.sub(v, 19, 34) ~= ARGV[1] then
  return 0
end
",
            $body,
            "\nreturn 1\n"
        )
    };
}

/// Completes a record: `ARGV[1]` is the whole in-progress value the claim
/// wrote (layout, 'P', fingerprint, token), `ARGV[2]` the whole completed
/// one (layout, 'C', fingerprint, response). Comparing and writing whole values spares Redis
/// the substrings and the concatenation of `fenced!`: 3.5 µs of Redis CPU
/// per completion with a 200-byte response, against 4.0 µs.
///
/// A record that already holds exactly `ARGV[2]` answers 1 too, whatever
/// token `ARGV[1]` carries: redis-rs's cluster client, the standalone
/// connection's second sending and a completion retried once Redis is back
/// (see `deferred`) all send a completion again when a connection drops
/// before its answer arrives, and the first sending may have completed the
/// record. (A stale owner, or any token, whose completion is byte for byte
/// the one stored is told it succeeded as well: nothing is overwritten, the
/// TTL is not extended, and its value is the one every retry gets.)
///
/// In a file of its own, so that the Redis bench's `floor` sends this very
/// script.
pub(super) const COMPLETE: &str = include_str!("complete.lua");

pub(super) const RELEASE: &str = fenced!(
    r"
redis.call('DEL', KEYS[1])
if string.len(v) > 34 then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end"
);

/// Marks an in-progress record as waited on; answers 1 if it still is in
/// progress. A record of layout 1 (no version marker: a process of the
/// previous release holds it) is marked where that release marks it.
pub(super) const MARK_WAITING: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local n = 34
if string.sub(v, 1, 1) == 'P' then
  n = 33
elseif string.sub(v, 1, 2) ~= '\2P' then
  return 0
end
if string.len(v) < n then
  return 0
end
if string.len(v) == n then
  redis.call('SETRANGE', KEYS[1], n, 'w')
end
return 1
";

/// Evicts a record (the admin's): answers `{0}` if there is none, `{1}` if
/// it deleted a record that was not in progress, `{2}` if it deleted one in
/// progress (only with `ARGV[1]` = `'1'`, forced: its owner is fenced, and
/// waiters are told), and `{3, pttl}` if it refused one in progress. A
/// record of any layout is in progress if its tag, after a version byte
/// (below `' '`) if there is one, is `'P'`.
pub(super) const EVICT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  return {0}
end
local tag = string.sub(v, 1, 1)
if string.byte(v, 1) < 32 then
  tag = string.sub(v, 2, 2)
end
if tag ~= 'P' then
  redis.call('DEL', KEYS[1])
  return {1}
end
if ARGV[1] ~= '1' then
  return {3, redis.call('PTTL', KEYS[1])}
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], KEYS[1])
return {2}
";

/// The record and its remaining time to live, read together: the in-progress
/// answer's `retry_after` must be the lease of the record it saw, not the
/// retention of one completed in between.
pub(super) const LOOK: &str = r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

pub(super) const RENEW: &str = fenced!(
    r"
redis.call('PEXPIRE', KEYS[1], ARGV[2])"
);

/// Records a step of a call (`record_step.lua`), if the call's record is
/// the in-progress value `ARGV[1]` (layout, 'P', fingerprint, token; with or
/// without a waiter's `'w'`, which it keeps), and answers 1; otherwise
/// answers 0 and writes nothing. `KEYS[1]` is the call's record, `KEYS[2]`
/// its steps (a hash in the same slot: see `layout::steps_key`). It sets
/// the hash's field `f` to the fingerprint `ARGV[3]` and the step's field
/// `ARGV[4]` (`'s'` and its name) to its value `ARGV[5]`, keeps the hash
/// `ARGV[6]` ms and extends the record's lease to `ARGV[2]` ms, as `RENEW`
/// does.
///
/// Sent twice (see `COMPLETE`), it writes the same again while the lease
/// lives.
pub(super) const RECORD_STEP: &str = include_str!("record_step.lua");

/// The store's scripts.
pub(super) struct Scripts {
    pub(super) complete: Lua,
    pub(super) release: Lua,
    pub(super) renew: Lua,
    pub(super) record_step: Lua,
    pub(super) mark_waiting: Lua,
    pub(super) look: Lua,
    pub(super) evict: Lua,
}

/// A script: its source, and its SHA1 for `EVALSHA`.
pub(super) struct Lua {
    pub(super) source: &'static str,
    pub(super) script: Script,
}

impl Lua {
    pub(super) fn new(source: &'static str) -> Self {
        Self {
            source,
            script: Script::new(source),
        }
    }
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            complete: Lua::new(COMPLETE),
            release: Lua::new(RELEASE),
            renew: Lua::new(RENEW),
            record_step: Lua::new(RECORD_STEP),
            mark_waiting: Lua::new(MARK_WAITING),
            look: Lua::new(LOOK),
            evict: Lua::new(EVICT),
        }
    }
}
