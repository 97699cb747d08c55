-- `durability = "replicated"`: raises a topic's committed head (`ok` in its meta hash, never
-- lowered) once Redis `WAIT` confirmed the write, and only then tells every node, so readers
-- and fan-out never show what a failover could take back.
-- KEYS: 1 stream, 2 meta. ARGV: 1 the group's first seq, 2 its last seq, 3 the publish
-- command (PUBLISH, or SPUBLISH on a cluster), 4 its channel, 5 topic.
-- Publishes the messages from the group's first seq (or just past the committed head, if
-- higher) to its last: an older message this raise also makes visible (its own write's
-- `WAIT` timed out) reaches readers as a hole, which sends them to the store.
-- Returns 1 when it raised the head, else 0.
local s, m = KEYS[1], KEYS[2]
local first, upto = tonumber(ARGV[1]), tonumber(ARGV[2])
local ok = tonumber(redis.call('HGET', m, 'ok') or 0)
if upto <= ok then return 0 end
local head = tonumber(redis.call('HGET', m, 'head') or 0)
if upto > head then upto = head end
if upto <= ok then return 0 end
redis.call('HSET', m, 'ok', string.format('%d', upto))
local from = math.max(first, ok + 1)
local feed = {ARGV[5], '\n'}
local any = false
for _, e in ipairs(redis.call('XRANGE', s, string.format('%d-0', from), string.format('%d-0', upto))) do
  local t, ev, d = entry_fields(e[2])
  feed[#feed + 1] = string.format('%d %d %d %d\n', entry_seq(e[1]), t, #ev, #d)
  feed[#feed + 1] = ev
  feed[#feed + 1] = d
  any = true
end
if any then redis.call(ARGV[3], ARGV[4], table.concat(feed)) end
return 1
