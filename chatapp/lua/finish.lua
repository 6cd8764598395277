-- Fenced finish: exactly one run ends a reply. ARGV: P, mid, token, fin_json. Returns seq or -1.
local h = redis.call('HMGET', mkey(ARGV[2]), 'owner', 'state')
if h[1] ~= ARGV[3] or is_terminal(h[2]) then return -1 end
return finalize(ARGV[2], cjson.decode(ARGV[4]))
