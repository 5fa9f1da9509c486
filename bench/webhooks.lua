-- wrk script for the webhook benchmark: the stream of bench/webhooks.py, byte for byte
-- (but for the time in endsAt), built as each request is sent.
--   wrk -t1 -c32 -d20s -s bench/webhooks.lua URL -- GROUPS NONCE SERVICES STARTS_AT FIRST_STREAM
-- Each wrk thread is one stream (FIRST_STREAM, FIRST_STREAM + 1, ...). done() prints one
-- line "WRK_JSON {...}" with the totals. With WRK_SPREAD="host:port,host:port,..." in the
-- environment, thread n connects to its (n mod count)-th address instead of the URL's
-- (several replicas behind no load balancer; the URL's path is used for all).

local streams = 0
local threads = {}

local function spread_address(n)
  local spread = os.getenv("WRK_SPREAD")
  if not spread or spread == "" then return nil end
  local list = {}
  for item in spread:gmatch("[^,]+") do list[#list + 1] = item end
  local host, port = list[n % #list + 1]:match("^(.+):(%d+)$")
  return wrk.lookup(host, port)[1]
end

function setup(thread)
  local address = spread_address(streams)
  if address then thread.addr = address end
  thread:set("stream_offset", streams)
  streams = streams + 1
  table.insert(threads, thread)
end

local ALERTS = {"HighErrorRate", "HighLatencyP99", "PodCrashLooping", "DiskWillFillIn4Hours",
                "TargetDown", "ReplicationLagHigh", "QueueBacklogGrowing",
                "CertificateExpiresSoon"}
local SEVERITIES = {"critical", "warning", "warning", "error"}
local WRAP = 16777216
local concat, format = table.concat, string.format

local groups, nonce, services, starts_at, stream
-- wrk (4.1) builds one request on its first thread before the run and discards it: on
-- that thread, the discarded one is k = -1.
local k = 0
sent = 0
local last_second, ends_at = -1, nil

function init(args)
  groups = tonumber(args[1])
  nonce = args[2]
  services = tonumber(args[3])
  starts_at = args[4]
  stream = tonumber(args[5]) + stream_offset
  if stream_offset == 0 then k = -1 end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function group_of(group)
  local n = stream * 7919 + group
  -- The newest tenth of the map: front services, mostly unrelated (see webhooks.py).
  local front = math.max(1, math.floor(services / 10))
  local service = format("svc-%06d", services - 1 - (n * 2654435761) % 4294967296 % front)
  return ALERTS[n % #ALERTS + 1], service, SEVERITIES[n % #SEVERITIES + 1]
end

local function alert(parts, group, instance, resolved_at, name, service, severity)
  instance = instance % WRAP
  local fp = format("%02x%04x%06x%s", stream, group, instance, nonce)
  local host = format("%s-%x", service, instance)
  parts[#parts + 1] = concat({
    '{"status": "', resolved_at and "resolved" or "firing", '", "labels": {"alertname": "',
    name, '", "service": "', service, '", "severity": "', severity, '", "instance": "', host,
    '.prod.svc.cluster.local:8080", "job": "', service, '", "namespace": "prod", "pod": "',
    host, '-7c9f8d6b5-x2x4q", "cluster": "prod-eu-west-1", "region": "eu-west-1", ',
    '"env": "production", "prometheus": "monitoring/k8s"}, "annotations": {"summary": "',
    name, ' on ', host, ' [bench ', fp, ']", "description": "', name,
    ' has been active on ', host, ' (', service, ') for more than 5 minutes: the value is ',
    'above its threshold; see the dashboard and the runbook before restarting anything.", ',
    '"runbook_url": "https://runbooks.example.com/alerts/', name, '", "dashboard": ',
    '"https://grafana.example.com/d/svc/', service, '?var-instance=', host, '"}, ',
    '"startsAt": "', starts_at, '", "endsAt": "', resolved_at or "0001-01-01T00:00:00Z",
    '", "generatorURL": "http://prometheus-k8s-0.monitoring.svc:9090/graph?g0.expr=', name,
    '%7Bservice%3D%22', service, '%22%7D&g0.tab=1", "fingerprint": "', fp, '"}'})
end

function request()
  local group, r = k % groups, math.floor(k / groups)
  k = k + 1
  sent = k  -- requests built and sent (the last ones may be in flight when the run ends)
  local now = os.time()
  if now ~= last_second then
    last_second, ends_at = now, os.date("!%Y-%m-%dT%H:%M:%SZ", now)
  end
  local name, service, severity = group_of(group)
  local alerts = {}
  for i = 2 * r, 2 * r + 1 do alert(alerts, group, i, nil, name, service, severity) end
  for i = 2 * r - 6, 2 * r - 1 do alert(alerts, group, i, nil, name, service, severity) end
  for i = 2 * r - 8, 2 * r - 7 do alert(alerts, group, i, ends_at, name, service, severity) end
  local body = concat({
    '{"receiver": "firehouse", "status": "firing", "alerts": [', concat(alerts, ", "),
    '], "groupLabels": {"alertname": "', name, '", "service": "', service, '"}, ',
    '"commonLabels": {"alertname": "', name, '", "service": "', service, '", "severity": "',
    severity, '", "job": "', service, '", "namespace": "prod", "cluster": "prod-eu-west-1", ',
    '"region": "eu-west-1", "env": "production", "prometheus": "monitoring/k8s"}, ',
    '"commonAnnotations": {"runbook_url": "https://runbooks.example.com/alerts/', name,
    '"}, "externalURL": "http://alertmanager.monitoring.svc:9093", "version": "4", ',
    '"groupKey": "{}:{alertname=\\"', name, '\\", service=\\"', service, '\\"}", ',
    '"truncatedAlerts": 0}'})
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local sent_total = 0
  for _, thread in ipairs(threads) do sent_total = sent_total + (thread:get("sent") or 0) end
  local e = summary.errors
  io.write(format('WRK_JSON {"requests": %d, "duration_us": %d, "sent": %d, ' ..
    '"errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_status": %d, ' ..
    '"errors_timeout": %d, "latency_p50_us": %d, "latency_p99_us": %d, ' ..
    '"latency_max_us": %d}\n', summary.requests, summary.duration, sent_total, e.connect,
    e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency.max))
end
