-- Delete a conversation with its messages, streams, idempotency keys and leases.
-- ARGV: P, cid, uid. Returns -1 when the caller does not own it.
local cid, uid = ARGV[2], ARGV[3]
local ckey = P .. 'conv:' .. cid
if redis.call('HGET', ckey, 'user_id') ~= uid then return -1 end
local mids = redis.call('ZRANGE', ckey .. ':msgs', 0, -1)
-- earlier versions of regenerated replies are no longer in the conversation's index
local listed = #mids
for i = 1, listed do
  local versions = P .. 'msg:' .. mids[i] .. ':versions'
  for _, vid in ipairs(redis.call('LRANGE', versions, 0, -1)) do
    mids[#mids + 1] = vid  -- the current one comes twice; deleting twice is harmless
  end
  redis.call('DEL', versions)
end
for _, mid in ipairs(mids) do
  local idem_key = redis.call('HGET', mkey(mid), 'idem_key')
  if idem_key and idem_key ~= '' then redis.call('DEL', idem_key) end
  redis.call('DEL', mkey(mid), mkey(mid) .. ':partial', P .. 'ev:' .. mid)
  redis.call('ZREM', P .. 'leases', mid)
  redis.call('SREM', P .. 'user:' .. uid .. ':active', mid)
end
redis.call('DEL', ckey, ckey .. ':msgs')
redis.call('ZREM', P .. 'user:' .. uid .. ':convs', cid)
redis.call('ZREM', P .. 'user:' .. uid .. ':batchconvs', cid)
return listed
