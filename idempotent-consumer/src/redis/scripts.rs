//! The Lua scripts a subscriber and a publisher run: each one step done
//! atomically on the server.

/// Claims the entries idle for `ARGV[3]` ms, with their delivery counts.
/// KEYS: the stream; ARGV: the group, the member, the idle time, the
/// cursor, the count. Returns the next cursor, the entries, their counts.
pub(super) const CLAIM: &str = r"
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  counts[i] = 0
  if type(entry) == 'table' then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    if pending[1] then counts[i] = pending[1][4] end
  end
end
return {claimed[1], claimed[2], counts}
";

/// Sets the idle time of the entries still pending with this member (not
/// claimed by another meanwhile), without counting a delivery.
/// KEYS: the stream; ARGV: the group, the member, the idle time (ms), the
/// entry ids.
pub(super) const SET_IDLE: &str = r"
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if pending[1] then claim[#claim + 1] = ARGV[i] end
end
if #claim == 5 then return 0 end
claim[#claim + 1] = 'IDLE'
claim[#claim + 1] = ARGV[3]
claim[#claim + 1] = 'JUSTID'
return #redis.call(unpack(claim))
";

/// Acknowledges an entry and copies it to the dead-letter stream with the
/// reason; nothing if another member settled it already. KEYS: the stream,
/// the dead-letter stream; ARGV: the group, the entry id, the reason's and
/// the detail's fields and values, then the fields to copy if the entry is
/// gone (the stream deleted, say).
pub(super) const DEAD_LETTER: &str = r"
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local fields = {}
if entry[1] then
  fields = entry[1][2]
else
  for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
end
for i = 3, 6 do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
";

/// Adds an entry unless its id was published within the window.
/// KEYS: the stream, the id's deduplication key; ARGV: the window (ms),
/// the id, the payload. Returns the entry id and 1 if it was a duplicate.
pub(super) const PUBLISH: &str = r"
local existing = redis.call('GET', KEYS[2])
if existing then return {existing, 1} end
local entry = redis.call('XADD', KEYS[1], '*', 'message_id', ARGV[2], 'payload', ARGV[3])
redis.call('SET', KEYS[2], entry, 'PX', ARGV[1])
return {entry, 0}
";
