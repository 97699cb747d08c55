-- Replaces a job if it has not changed since it was read: compare-and-set on its lease
-- token ('lease' mode, '' for none) or on its version ('version' mode); appends the job's
-- events in the same script (events.lua), so a state is never kept without its event.
-- KEYS: 1 job hash, 2 ready, 3 delayed, 4 running, 5 finished, then the event topics' keys.
-- ARGV: 1 mode, 2 expected, 3 id, 4 state, 5 created, 6 run_at ('' none), 7 lease end
-- ('' none), 8 updated, 9 the events block's length E, 10 .. 9 + E the events block, then the
-- job's field/value pairs.
-- Returns the job's new version, then the first and last seq of each events topic.
-- Errors (nothing written): PLEXUS_UNKNOWN, PLEXUS_CHANGED.
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then return redis.error_reply('PLEXUS_UNKNOWN') end
local field = 'v'
if ARGV[1] == 'lease' then field = 'lease' end
local current = redis.call('HGET', job, field) or ''
if current ~= ARGV[2] then return redis.error_reply('PLEXUS_CHANGED') end
local v = tonumber(redis.call('HGET', job, 'v') or 0) + 1
local fields = 10 + tonumber(ARGV[9])
redis.call('DEL', job)
redis.call('HSET', job, 'v', v, unpack(ARGV, fields))
place(KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if ARGV[4] == 'succeeded' or ARGV[4] == 'dead' then
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[3])
else
  redis.call('ZREM', KEYS[5], ARGV[3])
end
return {v, unpack(append_events(10))}
