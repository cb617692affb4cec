-- KEYS: per period its counter and reservations, then the estimate key. ARGV: the cost, the
-- request id, each counter's TTL. The reservation becomes the real cost; the team's estimate
-- (the most a recent request cost) is raised to it.
local n = (#KEYS - 1) / 2
local cost = tonumber(ARGV[1])
for i = 1, n do
  redis.call('HDEL', KEYS[2 * i], ARGV[2])
  if cost > 0 then
    redis.call('INCRBYFLOAT', KEYS[2 * i - 1], ARGV[1])
    redis.call('EXPIRE', KEYS[2 * i - 1], tonumber(ARGV[2 + i]))
  end
end
local seen = redis.call('GET', KEYS[#KEYS])
if not seen or cost > tonumber(seen) then
  redis.call('SET', KEYS[#KEYS], ARGV[1], 'EX', 3600)
end
return 1
