-- Accept a user message and its (queued or cached) reply in one atomic step.
-- ARGV: P, uid, cid, user_mid, reply_mid, now_ms, spec_json
local uid, cid, umid, amid, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local spec = cjson.decode(ARGV[7])
local idem_key = nil
if spec.idempotency_key ~= '' then
  idem_key = spec.idempotency_key
  local existing = redis.call('GET', idem_key)
  if existing then return {'duplicate', existing} end
end
local active = P .. 'user:' .. uid .. ':active'
-- batch replies (spec.exempt_active) neither count against nor fill the per-user limit, which is
-- there to bound interactive chat; the batch queue paces them instead
if not spec.cached and not spec.exempt_active and spec.max_active > 0 and redis.call('SCARD', active) >= spec.max_active then
  return {'too_many'}
end
local ckey = P .. 'conv:' .. cid
if spec.conversation then
  redis.call('HSET', ckey, unpack(spec.conversation))
elseif redis.call('HGET', ckey, 'user_id') ~= uid then
  return {'not_found'}
end
local uidx = redis.call('HINCRBY', ckey, 'msg_counter', 1)
local aidx = redis.call('HINCRBY', ckey, 'msg_counter', 1)
redis.call('HSET', mkey(umid), unpack(spec.user_message))
redis.call('HSET', mkey(amid), unpack(spec.reply_message))
redis.call('ZADD', ckey .. ':msgs', uidx, umid, aidx, amid)
redis.call('HINCRBY', ckey, 'message_count', 2)
redis.call('HSET', ckey, 'updated_at', now)
-- a new conversation goes to the index spec.index names ('convs', the sidebar, unless it is a
-- batch's: 'batchconvs'); a later message to an existing one moves it up the sidebar as before
if spec.conversation and spec.index then
  redis.call('ZADD', P .. 'user:' .. uid .. ':' .. spec.index, now, cid)
else
  redis.call('ZADD', P .. 'user:' .. uid .. ':convs', now, cid)
end
if idem_key then
  redis.call('SET', idem_key, spec.idempotency_value, 'EX', spec.idempotency_ttl)
end
if spec.cached then
  append_event(amid, 'delta', spec.cached.delta_event, spec.cached.text)
  finalize(amid, spec.cached.fin)
else
  redis.call('ZADD', P .. 'leases', spec.lease_deadline, amid)
  if not spec.exempt_active then redis.call('SADD', active, amid) end
  append_event(amid, 'status', spec.queued_event, '')
end
return {'ok'}
