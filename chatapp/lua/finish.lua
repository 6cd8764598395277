-- Fenced finish: exactly one run ends a reply, writing the events it had not written yet first.
-- ARGV: P, mid, token, fin_json, events_json. Returns the final seq or -1.
local mid = ARGV[2]
local h = redis.call('HMGET', mkey(mid), 'owner', 'state')
if h[1] ~= ARGV[3] or is_terminal(h[2]) then return -1 end
append_events(mid, ARGV[5])
return finalize(mid, cjson.decode(ARGV[4]))
