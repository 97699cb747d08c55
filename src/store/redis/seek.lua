-- The position just before the first retained message at or after a time (the head when
-- there is none). Times never decrease along a topic, so a binary search over seqs works.
-- KEYS: 1 stream, 2 meta. ARGV: 1 now, 2 max messages, 3 max age ms, 4 time.
local s, m = KEYS[1], KEYS[2]
trim(s, m, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local first, head = bounds(s, m)
if first == nil then return 0 end
local want = tonumber(ARGV[4])
-- The answer is the first entry with time >= want, searched in [first, head + 1).
local lo, hi = first, head + 1
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local e = redis.call('XRANGE', s, string.format('%d-0', mid), '+', 'COUNT', 1)
  if #e == 0 or entry_seq(e[1][1]) > head then
    hi = mid
  else
    local seq = entry_seq(e[1][1])
    local t = entry_fields(e[1][2])
    if t >= want then hi = mid else lo = seq + 1 end
  end
end
if lo > head then return head end
return lo - 1
