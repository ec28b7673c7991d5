-- One request generator for every scenario; bench/scenarios.py (RequestSpec) builds its arguments:
--   wrk ... -s bench/wrk/scenario.lua <url> -- METHOD PATH BODY ID_MODE ID_LOW ID_HIGH [RECORD_DIR]
-- "{id}" in PATH and BODY becomes: nothing (ID_MODE none), a uniform random id in [ID_LOW, ID_HIGH]
-- (random), or ID_LOW + thread_index * ID_HIGH + n for the thread's n-th request (sequence: ids unique
-- across threads and connections). With RECORD_DIR, each thread writes "<status> <account id>" for every
-- 2xx answer to RECORD_DIR/acked-<thread>.txt. done() prints one machine-readable line: BENCH_RESULT {json}.

local next_thread_index = 0

function setup(thread)
  thread:set("thread_index", next_thread_index)
  next_thread_index = next_thread_index + 1
end

local method, path, body, id_mode, id_low, id_high, acked_file, fixed_request
local headers = {}
local sent = 0

local function record_acked(status, _, response_body)
  if status >= 200 and status < 300 then
    local account_id = response_body:match('"company_id":%s*"chatwoot_(%d+)"') or "0"
    acked_file:write(status, " ", account_id, "\n")
  end
end

function init(args)
  method, path, body, id_mode = args[1], args[2], args[3], args[4]
  id_low, id_high = tonumber(args[5]), tonumber(args[6])
  if body == "" then body = nil else headers["Content-Type"] = "application/json" end
  math.randomseed(os.time() * 1000 + thread_index)
  if id_mode == "none" then fixed_request = wrk.format(method, path, headers, body) end
  if args[7] and args[7] ~= "" then
    acked_file = io.open(string.format("%s/acked-%d.txt", args[7], thread_index), "w")
    acked_file:setvbuf("line")
    response = record_acked -- wrk only parses bodies when a global response() exists
  end
end

local function next_id()
  if id_mode == "random" then return math.random(id_low, id_high) end
  sent = sent + 1
  return id_low + thread_index * id_high + sent
end

function request()
  if fixed_request then return fixed_request end
  local id = string.format("%d", next_id())
  return wrk.format(method, (path:gsub("{id}", id)), headers, body and (body:gsub("{id}", id)))
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
