-- Hits on entry versions, gathered in-process and counted in one call. KEYS: the hits
-- index (a sorted set), then each entry's tallies (a hash). ARGV: how many index members to
-- keep, then four per entry: its id, its key, its hits, the USD they saved. A version no
-- longer stored (replaced, expired) or invalidated counts nothing; the index is trimmed to
-- the most hit once it holds twice as many.
local keep = tonumber(ARGV[1])
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 4
  local state = redis.call('HMGET', KEYS[i], 'id', 'invalidated')
  if state[1] == ARGV[at] and not state[2] then
    local hits = redis.call('HINCRBY', KEYS[i], 'hits', ARGV[at + 2])
    if tonumber(ARGV[at + 3]) > 0 then redis.call('HINCRBYFLOAT', KEYS[i], 'saved_usd', ARGV[at + 3]) end
    redis.call('ZADD', KEYS[1], hits, ARGV[at + 1])
  end
end
if redis.call('ZCARD', KEYS[1]) > 2 * keep then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
end
return 0
