-- Fenced finish: exactly one run ends a reply, writing the events it had not written yet first.
-- ARGV: P, mid, token, fin_json, then (type, data_json, text) triples. Returns the final seq or -1.
local mid = ARGV[2]
local h = redis.call('HMGET', mkey(mid), 'owner', 'state')
if h[1] ~= ARGV[3] or is_terminal(h[2]) then return -1 end
for i = 5, #ARGV, 3 do
  append_event(mid, ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
return finalize(mid, cjson.decode(ARGV[4]))
