-- A topic's numbers. KEYS: 1 stream, 2 meta. ARGV: 1 now, 2 max messages, 3 max age ms.
-- Returns {} for a topic never published, else first, head, deleted-through, messages,
-- bytes, last publish time.
local s, m = KEYS[1], KEYS[2]
trim(s, m, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local first, head, del = bounds(s, m)
if first == nil then return {} end
-- Messages above the committed head (written, not yet replicated) are not counted.
local hidden = tonumber(redis.call('HGET', m, 'head') or 0) - head
return {first, head, del, math.max(0, redis.call('XLEN', s) - hidden),
  tonumber(redis.call('HGET', m, 'bytes') or 0), tonumber(redis.call('HGET', m, 'last') or 0)}
