-- POST /payments with a key never used before on every request.
-- Each wrk thread gets its own id (setup runs in the main Lua state); the
-- run's start time keeps keys of successive runs apart.
local threads = 0
local run = tostring(os.time())
local body = '{"amount": 4200, "currency": "USD"}'

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
  thread:set("run", run)
end

local counter = 0

function request()
  counter = counter + 1
  return wrk.format("POST", "/payments", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "fresh-" .. run .. "-" .. thread_id .. "-" .. counter,
  }, body)
end
