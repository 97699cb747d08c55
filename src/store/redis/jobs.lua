-- Shared by the job scripts: keeps a job's place in its queue's sorted sets true.
-- ready: queued and due, by created then id; delayed: queued with a run_at, member
-- 'CREATED:ID' by run_at; running: by lease end.
local function place(ready, delayed, running, id, state, created, run_at, lease_until)
  redis.call('ZREM', ready, id)
  redis.call('ZREM', delayed, created .. ':' .. id)
  redis.call('ZREM', running, id)
  if state == 'queued' then
    if run_at ~= '' then
      redis.call('ZADD', delayed, run_at, created .. ':' .. id)
    else
      redis.call('ZADD', ready, created, id)
    end
  elseif state == 'running' then
    redis.call('ZADD', running, lease_until, id)
  end
end
