-- Store an entry version with fresh tallies beside it: an answer stored again is a new one.
-- KEYS: the entry, its tallies (a hash). ARGV: the entry's bytes, its TTL in seconds, its id.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'id', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
