-- Shared by every reply script (prepended by chatapp/scripts.py). ARGV[1] is the key prefix.
-- An event goes to the reply's own stream (id 0-<seq>, so replay is XRANGE and seq has no gaps)
-- and to the firehose that each web process's single reader follows.
local P = ARGV[1]
local FIREHOSE_MAXLEN = '%FIREHOSE_MAXLEN%'

local function mkey(mid) return P .. 'msg:' .. mid end

-- The newest usable turns of a conversation before a position, newest first, flat (role, content):
-- user turns, and replies that ended with text (a failed, unfinished or empty one is no part of a
-- prompt); only as far back as the token budget can use (about four bytes a token). max_score is
-- '+inf' or '(N'; budget -1 means none.
local function recent_turns(cid, max_score, budget, max_messages)
  local ids = redis.call('ZREVRANGEBYSCORE', P .. 'conv:' .. cid .. ':msgs', max_score, '-inf',
    'LIMIT', 0, max_messages)
  local used, out = 0, {}
  for _, mid in ipairs(ids) do
    local h = redis.call('HMGET', mkey(mid), 'role', 'content', 'state')
    local role, content = h[1], h[2] or ''
    if role == 'user' or (role and content ~= '' and (h[3] == 'done' or h[3] == 'cancelled')) then
      out[#out + 1] = role
      out[#out + 1] = content
      used = used + math.floor((string.len(content) + 3) / 4)
      if budget >= 0 and used > budget then break end
    end
  end
  return out
end

local function is_terminal(state)
  return state == 'done' or state == 'failed' or state == 'cancelled'
end

local function append_event(mid, t, data, text)
  local seq = redis.call('HINCRBY', mkey(mid), 'seq', 1)
  redis.call('XADD', P .. 'ev:' .. mid, '0-' .. seq, 't', t, 'd', data)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', FIREHOSE_MAXLEN, '*', 'm', mid, 's', seq, 't', t, 'd', data)
  if text ~= nil and text ~= '' then
    redis.call('APPEND', mkey(mid) .. ':partial', text)
  end
  return seq
end

-- Events as the append and finish scripts take them: one JSON array of [type, data_json, text]
-- (one argument, not three per event: packing arguments is most of a writer's CPU in redis-py).
local function append_events(mid, events_json)
  local seq = 0
  for _, e in ipairs(cjson.decode(events_json)) do
    seq = append_event(mid, e[1], e[2], e[3])
  end
  return seq
end

-- Ends a reply: the stored content is exactly the concatenated deltas, the terminal event is
-- written after the record so a reader that sees it finds the final message, and the
-- conversation's totals move in the same step.
local function finalize(mid, fin, now)
  if now then fin.now = now end  -- a fin encoded ahead of time gets the time of its use
  local key = mkey(mid)
  local content = redis.call('GET', key .. ':partial') or ''
  redis.call('HSET', key, 'state', fin.state, 'content', content, 'finish_reason', fin.finish_reason,
    'usage', fin.usage, 'cost_micros', fin.cost_micros, 'cached', fin.cached, 'error', fin.error,
    'meta', fin.meta, 'owner', '', 'updated_at', fin.now, 'finished_at', fin.now)
  redis.call('DEL', key .. ':partial')
  local seq = append_event(mid, fin.event_type, fin.event_data, '')
  redis.call('HSET', key, 'final_seq', seq)
  redis.call('ZREM', P .. 'leases', mid)
  redis.call('SREM', P .. 'user:' .. (redis.call('HGET', key, 'user_id') or '') .. ':active', mid)
  redis.call('EXPIRE', P .. 'ev:' .. mid, fin.stream_ttl)
  -- the outbox workers read to run after_generation once per reply, however it ended; it
  -- carries the finished record (not its text) so budgets and usage settle even if the
  -- conversation is deleted before a worker gets to it
  local entry = {'m', mid, 'content_chars', tostring(string.len(content))}
  local record = redis.call('HGETALL', key)
  for i = 1, #record, 2 do
    if record[i] ~= 'content' then
      entry[#entry + 1] = 'r.' .. record[i]
      entry[#entry + 1] = record[i + 1]
    end
  end
  redis.call('XADD', P .. 'finished', 'MAXLEN', '~', FIREHOSE_MAXLEN, '*', unpack(entry))
  local cid = redis.call('HGET', key, 'conversation_id')
  local ckey = P .. 'conv:' .. cid
  if cid and redis.call('EXISTS', ckey) == 1 then
    redis.call('HINCRBY', ckey, 'cost_micros', fin.cost_micros)
    redis.call('HSET', ckey, 'updated_at', fin.now)
    local uid = redis.call('HGET', ckey, 'user_id')
    -- XX: only moves a conversation already in the sidebar (a batch's stays out of it)
    redis.call('ZADD', P .. 'user:' .. uid .. ':convs', 'XX', fin.now, cid)
    redis.call('HINCRBY', P .. 'user:' .. uid .. ':usage', 'cost_micros', fin.cost_micros)
    redis.call('HINCRBY', P .. 'user:' .. uid .. ':usage', 'replies_' .. fin.state, 1)
  end
  return seq
end
