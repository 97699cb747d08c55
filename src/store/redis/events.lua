-- Shared by the job scripts: appends a job's events (messages with no idempotency key) to
-- their topics and publishes them, as append.lua does, in the job's own script, so the job
-- and its events are one atomic write.
-- The block starts at ARGV[at]: now, max messages, max age ms, the publish command (PUBLISH,
-- or SPUBLISH on a cluster; '' under `durability = "replicated"`, where commit.lua shows and
-- publishes the events once replicas hold them, as for append.lua), the number of topics,
-- then per topic: the index of its stream in KEYS (its meta is the next key), its name, its channel, its message count, then event
-- ('' none) and data per message.
-- Returns the first and last seq appended to each topic, in the block's order.
local function append_events(at)
  local now, maxn, maxage = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local publish = ARGV[at + 3]
  local p = at + 5
  local out = {}
  for _ = 1, tonumber(ARGV[at + 4]) do
    local ki, topic, channel, n = tonumber(ARGV[p]), ARGV[p + 1], ARGV[p + 2], tonumber(ARGV[p + 3])
    p = p + 4
    local s, m = KEYS[ki], KEYS[ki + 1]
    local head = tonumber(redis.call('HGET', m, 'head') or 0)
    if publish == '' then redis.call('HSETNX', m, 'ok', string.format('%d', head)) end
    out[#out + 1] = head + 1
    local last = tonumber(redis.call('HGET', m, 'last') or 0)
    local added = 0
    local feed = {topic, '\n'}
    for _ = 1, n do
      local ev, d = ARGV[p], ARGV[p + 1]
      p = p + 2
      head = head + 1
      if now > last then last = now end
      local id = string.format('%d-0', head)
      if ev == '' then
        redis.call('XADD', s, id, 't', last, 'd', d)
      else
        redis.call('XADD', s, id, 't', last, 'e', ev, 'd', d)
      end
      added = added + #d
      feed[#feed + 1] = string.format('%d %d %d %d\n', head, last, #ev, #d)
      feed[#feed + 1] = ev
      feed[#feed + 1] = d
    end
    if n > 0 then
      redis.call('HSET', m, 'head', string.format('%d', head), 'last', string.format('%d', last))
      redis.call('HINCRBY', m, 'bytes', added)
      trim(s, m, now, maxn, maxage)
      if publish ~= '' then
        redis.call('HSET', m, 'ok', string.format('%d', head))
        redis.call(publish, channel, table.concat(feed))
      end
    end
    out[#out + 1] = head
  end
  return out
end
