-- Reads after a position in one snapshot, with the bounds it was read against.
-- KEYS: 1 stream, 2 meta. ARGV: 1 now, 2 max messages, 3 max age ms, 4 first id to read
-- ('SEQ-0'), 5 limit, 6 max payload bytes.
-- Returns {} for a topic never published, else first, head, deleted-through, then
-- seq, time, event ('' none), data per message.
local s, m = KEYS[1], KEYS[2]
trim(s, m, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local first, head, del = bounds(s, m)
if first == nil then return {} end
-- A cursor past the committed head but within what was written was shown by a master whose
-- raise of `ok` a failover lost (the write itself was replicated before it was shown): the
-- reader waits there rather than being told the log was reset.
local after = tonumber(string.match(ARGV[4], '^(%d+)')) - 1
local written = tonumber(redis.call('HGET', m, 'head') or 0)
local shown = head
if after > shown and after <= written then shown = after end
local out = {first, shown, del}
local limit = tonumber(ARGV[5])
if limit > 0 then
  local max_bytes = tonumber(ARGV[6])
  local bytes = 0
  for _, e in ipairs(redis.call('XRANGE', s, ARGV[4], string.format('%d-0', head), 'COUNT', limit)) do
    local t, ev, d = entry_fields(e[2])
    bytes = bytes + #d
    if #out > 3 and bytes > max_bytes then break end
    out[#out + 1] = entry_seq(e[1])
    out[#out + 1] = t
    out[#out + 1] = ev
    out[#out + 1] = d
  end
end
return out
