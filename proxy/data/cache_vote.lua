-- One feedback vote on one entry version. KEYS: the entry's tallies (a hash). ARGV: entry
-- id, voter (the rated request's id), score. A voter voting again replaces its score.
-- Returns hits, saved USD, votes, score sum and why it was invalidated (nil: it was not);
-- nil when that version is no longer stored.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return nil end
local field = 'v:' .. ARGV[2]
local before = redis.call('HGET', KEYS[1], field)
redis.call('HSET', KEYS[1], field, ARGV[3])
if before then
  redis.call('HINCRBYFLOAT', KEYS[1], 'sum', tostring(tonumber(ARGV[3]) - tonumber(before)))
else
  redis.call('HINCRBY', KEYS[1], 'votes', 1)
  redis.call('HINCRBYFLOAT', KEYS[1], 'sum', ARGV[3])
end
return redis.call('HMGET', KEYS[1], 'hits', 'saved_usd', 'votes', 'sum', 'invalidated')
