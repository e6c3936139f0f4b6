-- wrk script for the 4 KiB GET benchmark (bench/run.sh).
-- BENCH_AUTH, when set and non-empty, is sent as the Authorization header (callfs);
-- nginx gets the same request without it. No request() function: wrk reuses one
-- pre-built request, which is the cheapest client path for both servers.
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
