-- A job run takes ownership of a reply (a fencing token), unless it is finished or another live
-- run holds it. On success it also returns what the job renders its request from, read in the same
-- step: the reply's record, its conversation, the user's name and the turns before it.
-- ARGV: P, mid, token, now_ms, lease_ms, max_attempts, failed_fin_json, cancelled_fin_json (their times are now_ms),
-- history_budget_tokens, history_max_messages
local mid, token, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local lease_ms, max_attempts = tonumber(ARGV[5]), tonumber(ARGV[6])
local key = mkey(mid)
local h = redis.call('HMGET', key, 'state', 'owner', 'cancel', 'attempt', 'provider_state')
local state, owner, cancel, attempt = h[1], h[2], h[3], tonumber(h[4] or '0')
if not state then return {'gone'} end
if is_terminal(state) then return {'finished', state} end
if owner and owner ~= '' then
  local deadline = redis.call('ZSCORE', P .. 'leases', mid)
  if deadline and tonumber(deadline) > now then return {'busy'} end
end
if cancel == '1' then
  finalize(mid, cjson.decode(ARGV[8]), now)
  return {'cancelled'}
end
if attempt >= max_attempts then
  finalize(mid, cjson.decode(ARGV[7]), now)
  return {'failed'}
end
attempt = attempt + 1
redis.call('HSET', key, 'owner', token, 'attempt', attempt, 'state', 'generating', 'updated_at', now)
redis.call('HSETNX', key, 'started_at', now)
redis.call('ZADD', P .. 'leases', now + lease_ms, mid)
local record = redis.call('HGETALL', key)
local cid = redis.call('HGET', key, 'conversation_id') or ''
local conv = redis.call('HGETALL', P .. 'conv:' .. cid)
local user_name = redis.call('HGET', P .. 'user:' .. (redis.call('HGET', key, 'user_id') or ''), 'name') or ''
local position = redis.call('ZSCORE', P .. 'conv:' .. cid .. ':msgs', mid)
local turns = {}
if position then turns = recent_turns(cid, '(' .. position, tonumber(ARGV[9]), tonumber(ARGV[10])) end
return {'ok', tostring(attempt), redis.call('GET', key .. ':partial') or '', h[5] or '', record, conv, user_name, turns}
