-- KEYS: per budgeted period, its spend counter and its hash of reservations (request id ->
-- "usd:expires"), then the team's estimate key. ARGV: per period its budget; then the
-- request's estimate, its id, the reservation's time to live, and 1 when this replica has
-- seen a request of the team finish. Redis's clock, so replicas agree.
-- A request is admitted while the budget is not spent and either nothing else is in flight
-- or everything in flight plus this request's estimate still fits: near the edge the
-- requests of every replica go one at a time, so together they overshoot by at most one
-- (as long as estimates hold: the larger of the request's own, from its size and output
-- cap at list price, and the most a request of the team cost in the last hour; until one
-- has finished, requests go one at a time).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = (#KEYS - 1) / 2
local seen = redis.call('GET', KEYS[#KEYS]) or (ARGV[n + 4] == '1' and '0')
local est = math.max(tonumber(ARGV[n + 1]), tonumber(seen or '0'))
local id, ttl = ARGV[n + 2], tonumber(ARGV[n + 3])
for i = 1, n do
  local spent = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local held, live = 0, 0
  local entries = redis.call('HGETALL', KEYS[2 * i])
  for j = 1, #entries, 2 do
    local usd, expires = string.match(entries[j + 1], '([^:]+):([^:]+)')
    if tonumber(expires) < now then
      redis.call('HDEL', KEYS[2 * i], entries[j])
    else
      held = held + tonumber(usd); live = live + 1
    end
  end
  local budget = tonumber(ARGV[i])
  if spent >= budget then return {0, 'spent', i, tostring(spent), tostring(held)} end
  -- no request of this team has finished lately: its cost is anyone's guess, so one at a time
  if live > 0 and (not seen or spent + held + est > budget) then
    return {0, 'edge', i, tostring(spent), tostring(held)}
  end
end
for i = 1, n do
  redis.call('HSET', KEYS[2 * i], id, tostring(est) .. ':' .. tostring(now + ttl))
  redis.call('EXPIRE', KEYS[2 * i], math.ceil(ttl) * 2)
end
return {1, 'ok', 0, '0', '0'}
