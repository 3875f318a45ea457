-- wrk script of `python -m services.bench orders`: one request kind, and at the end a
-- line "WRK_JSON {...}" with the status tally, errors and latency percentiles (the
-- per-thread tallies merged through wrk's setup/done hooks).
-- Arguments (after `--`): METHOD PATH [ITEM_LOW ITEM_HIGH] for POST /orders bodies.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  method, path = args[1], args[2]
  item_low, item_high = tonumber(args[3] or "1"), tonumber(args[4] or "1")
  counts = {}
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  if method == "POST" then
    local body = string.format('{"item_id": %d, "quantity": 1, "user_id": "w%d"}',
      math.random(item_low, item_high), math.random(1, 1000000000))
    return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
