-- The newest turns of a conversation before a position, newest first, in one call (see
-- recent_turns). ARGV: P, cid, max_score ('+inf' or '(N'), budget_tokens (-1: none), max_messages
return recent_turns(ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
