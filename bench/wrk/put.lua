-- wrk script for the 4 KiB PUT benchmark (bench/run.sh).
-- Each request PUTs the same 4096-byte body to one of BENCH_PUT_PATHS rotating paths
-- BENCH_PUT_PREFIX .. i .. ".bin" (i = 0 .. BENCH_PUT_PATHS-1), so after the first round
-- every PUT overwrites an existing file. BENCH_AUTH as in get.lua.
local auth = os.getenv("BENCH_AUTH")
local prefix = os.getenv("BENCH_PUT_PREFIX") or "/put/"
local paths = tonumber(os.getenv("BENCH_PUT_PATHS") or "8")

wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/octet-stream"
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

-- 4096 bytes: a 64-byte pattern repeated 64 times.
local pattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
wrk.body = string.rep(pattern, 4096 / #pattern)
assert(#wrk.body == 4096)

-- Threads start at different offsets so they do not walk the paths in lockstep.
local counter = 0
function setup(thread)
  thread:set("start", counter)
  counter = counter + 1
end

local n = nil
function request()
  if n == nil then
    n = tonumber(start) or 0
  end
  n = n + 1
  return wrk.format(nil, prefix .. (n % paths) .. ".bin")
end
