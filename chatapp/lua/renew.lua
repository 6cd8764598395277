-- A worker process renews the leases of all replies it runs, reads their Stop flags and marks
-- itself alive. ARGV: P, now_ms, lease_ms, worker_id, worker_deadline_ms, then (mid, token) pairs.
local now, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 6, #ARGV, 2 do
  local mid, token = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', mkey(mid), 'owner', 'cancel', 'state')
  if h[1] ~= token or is_terminal(h[3]) then
    out[#out + 1] = 'lost'
  else
    redis.call('ZADD', P .. 'leases', 'XX', now + lease_ms, mid)
    out[#out + 1] = (h[2] == '1') and 'cancel' or 'ok'
  end
end
redis.call('ZADD', P .. 'workers', ARGV[5], ARGV[4])
redis.call('ZREMRANGEBYSCORE', P .. 'workers', '-inf', now)
return out
