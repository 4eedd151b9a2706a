-- POST /payments cycling over 1000 keys: after the first 1000 requests (the
-- script is run once to warm up), every request is a replay.
local counter = 0
local body = '{"amount": 4200, "currency": "USD"}'

function request()
  counter = counter + 1
  return wrk.format("POST", "/payments", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "replay-" .. (counter % 1000),
  }, body)
end
