-- Stop a reply for its owner. Nobody generating it (queued, or between attempts): it ends here;
-- otherwise the running job sees the flag within one lease renewal and stops its provider.
-- ARGV: P, mid, uid, cancelled_fin_json
local key = mkey(ARGV[2])
local h = redis.call('HMGET', key, 'user_id', 'state', 'owner')
if h[1] ~= ARGV[3] then return {'not_found'} end
if is_terminal(h[2]) then return {'finished', h[2]} end
redis.call('HSET', key, 'cancel', '1')
if not h[3] or h[3] == '' then
  finalize(ARGV[2], cjson.decode(ARGV[4]))
  return {'cancelled'}
end
return {'requested'}
