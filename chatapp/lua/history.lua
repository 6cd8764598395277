-- The newest turns of a conversation before a position, newest first, in one call: only role,
-- content and state, and no further back than the token budget can use (about four bytes a
-- token). ARGV: P, cid, max_score ('+inf' or '(N'), budget_tokens (-1: none), max_messages
local ids = redis.call('ZREVRANGEBYSCORE', P .. 'conv:' .. ARGV[2] .. ':msgs', ARGV[3], '-inf',
  'LIMIT', 0, tonumber(ARGV[5]))
local budget, used, out = tonumber(ARGV[4]), 0, {}
for _, mid in ipairs(ids) do
  local h = redis.call('HMGET', mkey(mid), 'role', 'content', 'state')
  if h[1] then
    out[#out + 1] = h[1]
    out[#out + 1] = h[2] or ''
    out[#out + 1] = h[3] or ''
    used = used + math.floor((string.len(h[2] or '') + 3) / 4)
    if budget >= 0 and used > budget then break end
  end
end
return out
