-- Decide what to do with a reply whose lease deadline passed.
-- ARGV: P, mid, now_ms, grace_ms, max_attempts, failed_fin_json, cancelled_fin_json (their times are now_ms)
local mid, now, grace = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local score = redis.call('ZSCORE', P .. 'leases', mid)
if not score or tonumber(score) > now then return {'skip'} end
local key = mkey(mid)
local h = redis.call('HMGET', key, 'state', 'owner', 'cancel', 'attempt')
if not h[1] or is_terminal(h[1]) then
  redis.call('ZREM', P .. 'leases', mid)
  return {'cleaned'}
end
if h[3] == '1' then
  finalize(mid, cjson.decode(ARGV[7]), now)
  return {'cancelled'}
end
redis.call('ZADD', P .. 'leases', now + grace, mid)
if h[2] and h[2] ~= '' then
  -- its worker stopped renewing: fence that run out
  redis.call('HSET', key, 'owner', '')
  if tonumber(h[4] or '0') >= tonumber(ARGV[5]) then
    finalize(mid, cjson.decode(ARGV[6]), now)
    return {'failed'}
  end
  return {'requeue'}
end
return {'check_queue'}
