-- The oldest due job of a queue, a candidate for a claim (the claim itself is a job_save in
-- version mode). Moves jobs whose run_at has come from delayed to ready first.
-- KEYS: 1 ready, 2 delayed. ARGV: 1 now, 2 how many. Returns the oldest due ids, oldest first.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local created, id = string.match(member, '^(%d+):(%x+)$')
  if created then redis.call('ZADD', KEYS[1], created, id) end
  redis.call('ZREM', KEYS[2], member)
end
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
