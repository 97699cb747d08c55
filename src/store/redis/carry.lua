-- Carries a job topic's seq counter over from the key a release before this one used (see
-- keys.rs): the old messages read as deleted. KEYS: 1 the topic's meta in its new slot.
-- ARGV: 1 head, 2 time of the last message. Returns 1 when carried, 0 when the new meta
-- already exists (another node carried it, or this release already wrote there).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'head', ARGV[1], 'del', ARGV[1], 'last', ARGV[2], 'bytes', 0)
return 1
