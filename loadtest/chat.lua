-- wrk script: a two-message chat completion, or the same request on another surface.
-- Environment: SURFACE=chat (default) | responses | messages (the body's shape: POST it to
-- /v1/responses or /v1/messages), MODEL (default "bench"), API_KEY (default "sk-bench"), STREAM=1 for SSE,
-- USAGE=1 to ask for the usage chunk, UNIQUE=1 to make every request's prompt differ
-- (so a cache can never hit), HEADER="name: value" for one extra header, HEADERS="a: 1|b: 2"
-- for several.
local model = os.getenv("MODEL") or "bench"
local key = os.getenv("API_KEY") or "sk-bench"
local stream = os.getenv("STREAM") == "1"
local usage = os.getenv("USAGE") == "1"
local unique = os.getenv("UNIQUE") == "1"
local extra = os.getenv("HEADER")
local extras = os.getenv("HEADERS")
local surface = os.getenv("SURFACE") or "chat"
local system = "You are a helpful assistant."

local function body(n)
  local prompt = "Say hello and tell me a short fact about the ocean."
  if n then prompt = prompt .. " #" .. n end
  local b
  if surface == "responses" then
    b = '{"model":"' .. model .. '","instructions":"' .. system .. '","input":"' .. prompt
      .. '","max_output_tokens":64,"temperature":0.2'
    if stream then b = b .. ',"stream":true' end
    return b .. '}'
  elseif surface == "messages" then
    b = '{"model":"' .. model .. '","system":"' .. system .. '","messages":[{"role":"user","content":"'
      .. prompt .. '"}],"max_tokens":64,"temperature":0.2'
    if stream then b = b .. ',"stream":true' end
    return b .. '}'
  end
  b = '{"model":"' .. model .. '","messages":['
    .. '{"role":"system","content":"' .. system .. '"},'
    .. '{"role":"user","content":"' .. prompt .. '"}],"max_tokens":64,"temperature":0.2'
  if stream then
    b = b .. ',"stream":true'
    if usage then b = b .. ',"stream_options":{"include_usage":true}' end
  end
  return b .. '}'
end

wrk.method = "POST"
wrk.body = body(nil)
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
local function add_header(text)
  local name, value = text:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end
if extra then add_header(extra) end
if extras then
  for item in extras:gmatch("[^|]+") do add_header(item) end
end

if unique then
  local counter = 0
  local id = tostring(math.random(1, 1e9))
  request = function()
    counter = counter + 1
    return wrk.format(nil, nil, nil, body(id .. "-" .. counter))
  end
end

-- CHECK=1 prints the first non-200 answer (off by default: the hook costs wrk CPU)
if os.getenv("CHECK") == "1" then
  local bad = 0
  function response(status, headers, b)
    if status ~= 200 and bad < 1 then
      bad = bad + 1
      io.stderr:write("non-200 status " .. status .. ": " .. string.sub(b or "", 1, 200) .. "\n")
    end
  end
end
