-- PUT a 1-byte body to a new name on every request until QUOTA files were created, then exit
-- (wrk 4.1 has no working per-thread stop from response(); run it with -t1).
-- wrk args: QUOTA STAGE PREFIX (e.g. 5000 s1 /v1/files/scale); BENCH_AUTH: the Authorization value.
function init(args)
  quota = tonumber(args[1])
  stage = args[2]
  prefix = args[3]
  counter, created, errors = 0, 0, 0
  wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
end

function request()
  counter = counter + 1
  return wrk.format("PUT", string.format("%s/%s-%08d", prefix, stage, counter), nil, "x")
end

function response(status)
  if status == 201 then
    created = created + 1
  else
    errors = errors + 1
  end
  if created >= quota or errors > 100 then
    io.write(string.format("created %d errors %d\n", created, errors))
    io.flush()
    os.exit(errors > 100 and 1 or 0)
  end
end
