-- Invalidate one entry version for every replica. KEYS: the entry, its tallies, the list of
-- invalidations. ARGV: entry id, tombstone, reason, record (JSON), how many records to keep.
-- The tombstone takes the entry's place for the rest of its TTL, so a lookup knows why it
-- misses. A version no longer stored, or invalidated already, is left alone (returns 0).
local state = redis.call('HMGET', KEYS[2], 'id', 'invalidated')
if state[1] ~= ARGV[1] or state[2] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
redis.call('HSET', KEYS[2], 'invalidated', ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 1
