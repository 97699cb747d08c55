-- Adds topics to the topic set (plexus:topics) unless that would make it hold more than the
-- cap (limits.max_topics_total): the set's size is the count, read in O(1).
-- Each new name also goes into the sorted set of names that the paged listing reads.
-- KEYS: 1 the set, 2 the sorted set by name. ARGV: 1 the cap, then the topic names (each
-- once).
-- Returns 1 when every name is in the set; the error PLEXUS_TOO_MANY_TOPICS adds none.
local new = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then new[#new + 1] = ARGV[i] end
end
if #new == 0 then return 1 end
if redis.call('SCARD', KEYS[1]) + #new > tonumber(ARGV[1]) then
  return redis.error_reply('PLEXUS_TOO_MANY_TOPICS')
end
redis.call('SADD', KEYS[1], unpack(new))
for _, name in ipairs(new) do redis.call('ZADD', KEYS[2], 0, name) end
return 1
