-- wrk script: report.lua's totals, and the responses counted per worker (the X-Worker-Pid header the app sets)
-- and per second of the wall clock, as one more JSON line: "SHARES-JSON {"PID:EPOCH_SECOND": count, ...}".
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
local totals = done

counts = {}  -- global: done() reads each thread's table with thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  local key = (headers["x-worker-pid"] or "none") .. ":" .. os.time()
  counts[key] = (counts[key] or 0) + 1
end

done = function(summary, latency, requests)
  totals(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("counts")) do
      merged[key] = (merged[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', key, count))
  end
  io.write("SHARES-JSON {" .. table.concat(parts, ", ") .. "}\n")
end
