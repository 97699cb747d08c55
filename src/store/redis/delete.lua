-- Drops a topic's messages, keeping its seq counter. KEYS: 1 stream, 2 meta.
-- Returns 0 for a topic never published, else 1.
local s, m = KEYS[1], KEYS[2]
if redis.call('EXISTS', m) == 0 then return 0 end
redis.call('DEL', s)
local head = redis.call('HGET', m, 'head') or '0'
redis.call('HSET', m, 'del', head, 'ok', head, 'bytes', 0)
return 1
