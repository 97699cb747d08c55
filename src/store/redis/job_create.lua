-- Stores a new job. KEYS: 1 job hash, 2 ready, 3 delayed, 4 running, 5 the idempotency key
-- (optional). ARGV: 1 payload fingerprint 'SHA LEGACY' (as in append.lua; the SHA is stored), 2 id, 3 key ttl ms, 4 state, 5 created, 6 run_at
-- ('' none), 7 lease end ('' none), then the job's field/value pairs.
-- Returns '' when stored, or the id of the job the key first made; a key used with another
-- payload is the error PLEXUS_CONFLICT.
if KEYS[5] then
  local sha, legacy = string.match(ARGV[1], '^(%S+) (%S+)$')
  local v = redis.call('GET', KEYS[5])
  if v then
    local fp, id = string.match(v, '^(%S+) (%S+)$')
    if fp ~= sha and fp ~= legacy then return redis.error_reply('PLEXUS_CONFLICT') end
    return id
  end
  redis.call('SET', KEYS[5], sha .. ' ' .. ARGV[2], 'PX', ARGV[3])
end
redis.call('HSET', KEYS[1], 'v', 1, unpack(ARGV, 8))
place(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return ''
