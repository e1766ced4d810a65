-- wrk script: POSTs one chat request, rotating over gateway keys, and prints the result as JSON.
--
-- Configured by environment (bench/wrk.ts sets it):
--   BENCH_BODY_FILE   the request body
--   BENCH_HEADERS     extra headers, "name: value" separated by newlines
--   BENCH_KEYS_FILE   optional: one bearer key per line; request i uses key i mod n, so load spreads
--                     over many accounts (no key file: "Authorization: Bearer bench")
--
-- done() prints one line "BENCH_JSON {…}" with latency percentiles in microseconds.

local function read_file(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

local thread_no = 0
function setup(thread)
  -- Each thread has its own Lua state; give each a different starting key.
  thread:set('thread_no', thread_no)
  thread_no = thread_no + 1
end

local requests = {}
local n = 0
local i = 0

function init(args)
  local body = read_file(os.getenv('BENCH_BODY_FILE'))
  local headers = { ['Content-Type'] = 'application/json' }
  for line in (os.getenv('BENCH_HEADERS') or ''):gmatch('[^\n]+') do
    local name, value = line:match('^%s*([^:]+):%s*(.-)%s*$')
    if name then headers[name] = value end
  end
  local keys = {}
  local keys_file = os.getenv('BENCH_KEYS_FILE')
  if keys_file and keys_file ~= '' then
    for key in read_file(keys_file):gmatch('[^\n]+') do keys[#keys + 1] = key end
  end
  if #keys == 0 then keys[1] = 'bench' end
  -- Pre-format every distinct request once: request() then only picks one.
  for _, key in ipairs(keys) do
    headers['Authorization'] = 'Bearer ' .. key
    requests[#requests + 1] = wrk.format('POST', nil, headers, body)
  end
  n = #requests
  i = (thread_no or 0) * 7919 % n
end

function request()
  i = i % n + 1
  return requests[i]
end

function done(summary, latency, _)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, p(50), p(90), p(99), p(99.9), latency.max))
end
