-- Appends one topic's messages atomically and publishes them to every node.
-- KEYS: 1 stream, 2 meta, 3 this call's receipt, 4.. the idempotency keys of the messages
-- that have one, in order.
-- ARGV: 1 now, 2 max messages, 3 max age ms, 4 idempotency ttl ms, 5 topic, 6 '1' = only
-- check the keys, 7 the publish command (PUBLISH, or SPUBLISH on a cluster; '' under
-- `durability = "replicated"`, where commit.lua shows and publishes once replicas hold it), 8 its channel,
-- 9 n, then 4 per message: event ('' none), data, has key '1'|'0', fingerprint: 'SHA LEGACY',
-- the SHA-256 in hex, which a new key stores, and the FNV-1a 64 in decimal, which a key stored
-- by a release before SHA-256 holds (a decimal never equals a 64-digit hex).
-- Returns seq, time, replayed (0|1) per message; a reused key with another body is an error
-- `PLEXUS_CONFLICT <index>` and stores nothing. A call repeated by the client after a
-- dropped connection finds its receipt and answers as the first time, appending nothing.
local s, m, receipt = KEYS[1], KEYS[2], KEYS[3]
if ARGV[6] ~= '1' then
  local done = redis.call('GET', receipt)
  if done then
    local out = {}
    for n in string.gmatch(done, '%d+') do out[#out + 1] = tonumber(n) end
    return out
  end
end
local now, maxn, maxage = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[9])

local first_fp = {}
local ki = 4
for i = 0, n - 1 do
  local b = 10 + i * 4
  if ARGV[b + 2] == '1' then
    local k = KEYS[ki]
    ki = ki + 1
    local fp = first_fp[k]
    if fp == nil then
      local v = redis.call('GET', k)
      if v then fp = string.match(v, '^(%S+)') else fp = string.match(ARGV[b + 3], '^(%S+)') end
      first_fp[k] = fp
    end
    local sha, legacy = string.match(ARGV[b + 3], '^(%S+) (%S+)$')
    if fp ~= sha and fp ~= legacy then
      return redis.error_reply('PLEXUS_CONFLICT ' .. i)
    end
  end
end
if ARGV[6] == '1' then return {} end

local head = tonumber(redis.call('HGET', m, 'head') or 0)
-- Under `replicated` a topic's first write starts its committed head where it is, so what
-- this call appends stays hidden until commit.lua raises it.
if ARGV[7] == '' then redis.call('HSETNX', m, 'ok', string.format('%d', head)) end
local last = tonumber(redis.call('HGET', m, 'last') or 0)
local added = 0
local out = {}
local feed = {ARGV[5], '\n'}
local appended = 0
ki = 4
for i = 0, n - 1 do
  local b = 10 + i * 4
  local ev, d = ARGV[b], ARGV[b + 1]
  local k = nil
  if ARGV[b + 2] == '1' then
    k = KEYS[ki]
    ki = ki + 1
  end
  local prior = false
  if k then prior = redis.call('GET', k) end
  if prior then
    local _, seq, t = string.match(prior, '^(%S+) (%d+) (%d+)$')
    out[#out + 1] = tonumber(seq)
    out[#out + 1] = tonumber(t)
    out[#out + 1] = 1
  else
    head = head + 1
    if now > last then last = now end
    local id = string.format('%d-0', head)
    if ev == '' then
      redis.call('XADD', s, id, 't', last, 'd', d)
    else
      redis.call('XADD', s, id, 't', last, 'e', ev, 'd', d)
    end
    added = added + #d
    appended = appended + 1
    if k then
      redis.call('SET', k, string.format('%s %d %d', string.match(ARGV[b + 3], '^(%S+)'), head, last), 'PX', ARGV[4])
    end
    out[#out + 1] = head
    out[#out + 1] = last
    out[#out + 1] = 0
    feed[#feed + 1] = string.format('%d %d %d %d\n', head, last, #ev, #d)
    feed[#feed + 1] = ev
    feed[#feed + 1] = d
  end
end
if appended > 0 then
  redis.call('HSET', m, 'head', string.format('%d', head), 'last', string.format('%d', last))
  redis.call('HINCRBY', m, 'bytes', added)
  trim(s, m, now, maxn, maxage)
  if ARGV[7] ~= '' then
    redis.call('HSET', m, 'ok', string.format('%d', head))
    redis.call(ARGV[7], ARGV[8], table.concat(feed))
  end
end
redis.call('SET', receipt, table.concat(out, ' '), 'PX', 60000)
return out
