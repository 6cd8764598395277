-- Fenced append: only the current owner of an unfinished reply may add events.
-- ARGV: P, mid, token, events_json. Returns the last seq, or -1 if fenced out.
local mid, token = ARGV[2], ARGV[3]
local h = redis.call('HMGET', mkey(mid), 'owner', 'state')
if h[1] ~= token or is_terminal(h[2]) then return -1 end
return append_events(mid, ARGV[4])
