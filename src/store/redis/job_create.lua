-- Stores a new job and appends its events in the same script (events.lua).
-- KEYS: 1 job hash, 2 ready, 3 delayed, 4 running, then the event topics' keys, and last the
-- idempotency key when there is one.
-- ARGV: 1 payload fingerprint 'SHA LEGACY' (as in append.lua; the SHA is stored), '' without
-- an idempotency key, 2 id, 3 key ttl ms, 4 state, 5 created, 6 run_at ('' none), 7 lease end
-- ('' none), 8 the events block's length E, 9 .. 8 + E the events block, then the job's
-- field/value pairs.
-- Returns, when stored, the first and last seq of each events topic (an array), or else the
-- id of the job the key first made (nothing written); a key used with another payload is the
-- error PLEXUS_CONFLICT.
if ARGV[1] ~= '' then
  local key = KEYS[#KEYS]
  local sha, legacy = string.match(ARGV[1], '^(%S+) (%S+)$')
  local v = redis.call('GET', key)
  if v then
    local fp, id = string.match(v, '^(%S+) (%S+)$')
    if fp ~= sha and fp ~= legacy then return redis.error_reply('PLEXUS_CONFLICT') end
    return id
  end
  redis.call('SET', key, sha .. ' ' .. ARGV[2], 'PX', ARGV[3])
end
redis.call('HSET', KEYS[1], 'v', 1, unpack(ARGV, 9 + tonumber(ARGV[8])))
place(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return append_events(9)
