-- Records a step of a call, under its live lease: see `RECORD_STEP` in
-- scripts.rs for the keys and arguments.
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] and v ~= ARGV[1] .. 'w' then
  return 0
end
-- The steps first: a key of another type fails here, before any write.
redis.call('HSET', KEYS[2], 'f', ARGV[3], ARGV[4], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
