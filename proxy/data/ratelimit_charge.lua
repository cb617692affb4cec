-- KEYS[1]: a TAT key. ARGV[1]: seconds to move it on (a finished request's tokens). Redis's clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = math.max(tat, now) + tonumber(ARGV[1])
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil((new - now + 1) * 1000))
return 1
