-- Fenced append: only the current owner of an unfinished reply may add events.
-- ARGV: P, mid, token, then (type, data_json, text) triples. Returns the last seq, or -1 if fenced out.
local mid, token = ARGV[2], ARGV[3]
local h = redis.call('HMGET', mkey(mid), 'owner', 'state')
if h[1] ~= token or is_terminal(h[2]) then return -1 end
local seq = 0
for i = 4, #ARGV, 3 do
  seq = append_event(mid, ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
return seq
