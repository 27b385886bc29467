-- wrk script: registers a new instance per request, spread over 100 services
-- (used by scripts/measure-catalog.sh). Each wrk thread numbers its own instances.
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
  prefix = os.getenv("PREFIX") or "b"
end
request = function()
  counter = counter + 1
  local path = string.format("/v1/services/%s%d/instances/t%d-%d", prefix, counter % 100, tid, counter)
  return wrk.format("PUT", path, {["Content-Type"] = "application/json"},
    '{"address":"10.0.0.1","port":8080,"ttl":"1h","tags":["bench"],"meta":{"k":"v"}}')
end
