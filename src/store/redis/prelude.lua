-- Shared by every topic script. KEYS[1] is the topic's stream, KEYS[2] its meta hash.

-- The fields of a stream entry: time, event ('' when none), payload.
local function entry_fields(f)
  local t, e, d = 0, '', ''
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 't' then t = tonumber(f[i + 1])
    elseif k == 'e' then e = f[i + 1]
    elseif k == 'd' then d = f[i + 1] end
  end
  return t, e, d
end

local function entry_seq(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- Retention: drops the oldest entries while there are more than `maxn` or they are older
-- than `now - maxage`, keeping the meta hash's byte count true.
local function trim(s, m, now, maxn, maxage)
  local len = redis.call('XLEN', s)
  if len == 0 then return end
  local cutoff = now - maxage
  local head = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  local t0 = entry_fields(head[1][2])
  if len <= maxn and t0 >= cutoff then return end
  local dropped = 0
  for _ = 1, 100 do
    local over = len - maxn
    local want = math.min(math.max(over, 100), 1000)
    local entries = redis.call('XRANGE', s, '-', '+', 'COUNT', want)
    local count, last = 0, nil
    for _, e in ipairs(entries) do
      local t, _, d = entry_fields(e[2])
      if count < over or t < cutoff then
        count = count + 1
        dropped = dropped + #d
        last = e[1]
      else
        break
      end
    end
    if count == 0 then break end
    redis.call('XTRIM', s, 'MINID', string.format('%d-0', entry_seq(last) + 1))
    len = len - count
    if count < #entries or len == 0 then break end
  end
  if dropped > 0 then redis.call('HINCRBY', m, 'bytes', -dropped) end
end

-- first retained seq, committed head, deleted-through; nil for a topic never published.
-- Readers see up to the committed head `ok`: under `durability = "replicated"` commit.lua
-- raises it once the replicas hold a write; otherwise append.lua keeps it at `head`. A topic
-- written before `ok` existed has none and shows everything.
local function bounds(s, m)
  if redis.call('EXISTS', m) == 0 then return nil end
  local head = tonumber(redis.call('HGET', m, 'head') or 0)
  local ok = tonumber(redis.call('HGET', m, 'ok') or head)
  if ok < head then head = ok end
  local del = tonumber(redis.call('HGET', m, 'del') or 0)
  local first = head + 1
  local e = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  if #e > 0 then first = math.min(entry_seq(e[1][1]), head + 1) end
  return first, head, del
end
