-- Fenced write of the provider's resume state. ARGV: P, mid, token, state_json
local h = redis.call('HMGET', mkey(ARGV[2]), 'owner', 'state')
if h[1] ~= ARGV[3] or is_terminal(h[2]) then return 0 end
redis.call('HSET', mkey(ARGV[2]), 'provider_state', ARGV[4])
return 1
