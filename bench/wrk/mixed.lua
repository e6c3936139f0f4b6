-- wrk script for the mixed run of bench/run.sh (memory must stay flat over minutes of it).
-- Out of every 20 requests: 15 GET of the 4 KiB file, 4 PUT of 4 KiB to one of 64 rotating
-- paths, 1 listing of the PUT directory. No HEAD: wrk waits for a HEAD response's body (its
-- Content-Length) and stalls the connection. BENCH_AUTH as in get.lua.
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
local pattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
local body = string.rep(pattern, 4096 / #pattern)

local counter = 0
function setup(thread)
  thread:set("start", counter * 7)
  counter = counter + 1
end

local n = nil
function request()
  if n == nil then
    n = tonumber(start) or 0
  end
  n = n + 1
  local slot = n % 20
  if slot < 15 then
    return wrk.format("GET", "/v1/files/bench/get-4k.bin")
  elseif slot < 19 then
    return wrk.format("PUT", "/v1/files/bench/mixed/" .. (n % 64) .. ".bin", nil, body)
  else
    return wrk.format("GET", "/v1/directories/bench/mixed")
  end
end
