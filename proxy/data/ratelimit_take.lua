-- KEYS: the TAT keys. ARGV: per key (interval_s, cost). Server time, so replicas agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = 60.0
local out, news = {}, {}
local ok = 1
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local cost = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  local start = math.max(tat, now)
  local new = start + interval * cost
  local allowed = 1
  local wait = 0
  if cost > 0 and new - window > now then allowed = 0; wait = new - window - now end
  if cost == 0 and start - now > window then allowed = 0; wait = start - window - now end
  if allowed == 0 then ok = 0 end
  news[i] = new
  local remaining = math.max(math.floor((window - (new - now)) / interval), 0)
  if allowed == 0 then remaining = 0; new = start end
  out[i] = {allowed, remaining, tostring(new - now), tostring(wait)}
end
if ok == 1 then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, tostring(news[i]), 'PX', math.ceil((news[i] - now + 1) * 1000))
  end
end
return out
