-- A new reply to the conversation's last user message; the reply it replaces stays stored as an
-- earlier version. The new reply takes the old one's place (same position) in the conversation,
-- so history, listings and message_count see one reply per turn, while every version's id is
-- kept in order on a list named after the user message it answers.
-- ARGV: P, uid, cid, expect_mid ('' = whatever is last), new_mid, now_ms, spec_json
-- Returns {'ok', old_mid} or {'not_found'} / {'no_reply'} / {'not_last', last_mid} /
-- {'in_progress', last_mid} / {'too_many'}.
local uid, cid, expect, amid, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local spec = cjson.decode(ARGV[7])
local ckey = P .. 'conv:' .. cid
if redis.call('HGET', ckey, 'user_id') ~= uid then return {'not_found'} end
local last = redis.call('ZRANGE', ckey .. ':msgs', -1, -1, 'WITHSCORES')
if #last == 0 then return {'no_reply'} end
local old, score = last[1], last[2]
local old_fields = redis.call('HMGET', mkey(old), 'role', 'state', 'reply_to')
if old_fields[1] ~= 'assistant' then return {'no_reply'} end
if expect ~= '' and expect ~= old then return {'not_last', old} end
if not is_terminal(old_fields[2]) then return {'in_progress', old} end
local active = P .. 'user:' .. uid .. ':active'
if spec.max_active > 0 and redis.call('SCARD', active) >= spec.max_active then return {'too_many'} end
local umid = old_fields[3]
local versions = P .. 'msg:' .. umid .. ':versions'
if redis.call('EXISTS', versions) == 0 then
  redis.call('RPUSH', versions, old)
  redis.call('HSET', mkey(old), 'versions_of', umid)
end
redis.call('RPUSH', versions, amid)
redis.call('HSET', mkey(amid), unpack(spec.reply_message))
redis.call('HSET', mkey(amid), 'reply_to', umid, 'versions_of', umid, 'replaces', old)
redis.call('ZREM', ckey .. ':msgs', old)
redis.call('ZADD', ckey .. ':msgs', score, amid)
redis.call('HSET', ckey, 'updated_at', now)
-- XX: a conversation indexed elsewhere (a batch's) is not pulled into the sidebar
redis.call('ZADD', P .. 'user:' .. uid .. ':convs', 'XX', now, cid)
redis.call('ZADD', P .. 'leases', spec.lease_deadline, amid)
redis.call('SADD', active, amid)
append_event(amid, 'status', spec.queued_event, '')
return {'ok', old}
