-- wrk script: POST /v1/leases with a JSON body (used by scripts/measure-leases.sh)
wrk.method = "POST"
wrk.body = '{"ttl":"1h"}'
wrk.headers["Content-Type"] = "application/json"
