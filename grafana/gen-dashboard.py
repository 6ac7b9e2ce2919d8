#!/usr/bin/env python3
"""Generates grafana/dashboards/analytics-dashboard.json (the provisioned "Analytics Dashboard").

The JSON is committed; this script is its source. After editing, regenerate and test:

    python3 grafana/gen-dashboard.py && make test-dashboards

Conventions: every expression filters on $instance and (where the series has it) $shard;
rates use $__rate_interval; panels whose series may legitimately be absent (errors, switches)
end in `or on() vector(0)` so they always show (and return) a value. Latency panels show
answered operations (`result="ok"`) unless they say otherwise; failed ones are drawn apart, and
the "including misses" histograms count failed and skipped operations as misses (+Inf bucket).
"""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}
I = 'instance=~"$instance"'
IS = 'instance=~"$instance",shard=~"$shard"'
OK = IS + ',result="ok"'
ERR = IS + ',result="error"'
RI = "$__rate_interval"

panels = []
_id = [0]
_y = [0]


def nid():
    _id[0] += 1
    return _id[0]


def row(title):
    if _x[0] > 0:
        _y[0] += _h[0]
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []})
    _y[0] += 1
    _x[0] = 0


_x = [0]
_h = [0]


def place(w, h):
    if _x[0] + w > 24:
        _x[0] = 0
        _y[0] += _h[0]
    if _x[0] == 0:
        _h[0] = h
    _h[0] = max(_h[0], h)
    pos = {"h": h, "w": w, "x": _x[0], "y": _y[0]}
    _x[0] += w
    if _x[0] >= 24:
        _x[0] = 0
        _y[0] += _h[0]
    return pos


def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": not instant,
         "instant": instant}
    return t


def ts(title, targets, unit="short", w=8, h=8, desc="", overrides=None, stack=False, minv=None,
       maxv=None):
    refs = "ABCDEFGHIJKLMNOP"
    p = {
        "type": "timeseries", "title": title, "id": nid(), "datasource": DS,
        "description": desc, "gridPos": place(w, h),
        "targets": [target(e, l, refs[i]) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"lineWidth": 1, "fillOpacity": 10 if not stack else 40,
                           "showPoints": "never", "spanNulls": True,
                           "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
            },
            "overrides": overrides or [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }
    if minv is not None:
        p["fieldConfig"]["defaults"]["min"] = minv
    if maxv is not None:
        p["fieldConfig"]["defaults"]["max"] = maxv
    panels.append(p)
    return p


def stat(title, targets, unit="short", w=4, h=4, desc="", text_mode="auto", mappings=None,
         thresholds=None, decimals=None):
    refs = "ABCDEFGHIJKLMNOP"
    p = {
        "type": "stat", "title": title, "id": nid(), "datasource": DS, "description": desc,
        "gridPos": place(w, h),
        "targets": [target(e, l, refs[i]) for i, (e, l) in enumerate(targets)],
        "fieldConfig": {"defaults": {
            "unit": unit, "mappings": mappings or [],
            "thresholds": thresholds or {"mode": "absolute",
                                         "steps": [{"color": "green", "value": None}]},
        }, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "textMode": text_mode, "colorMode": "value", "graphMode": "area",
                    "justifyMode": "auto", "orientation": "auto"},
    }
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    panels.append(p)
    return p


def dashed(name):
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "#808080"}}]}


def q(quant, metric, by="", sel=IS):
    by = f"le, {by}" if by else "le"
    return (f"histogram_quantile({quant}, sum by ({by}) "
            f"(rate({metric}_bucket{{{sel}}}[{RI}])))")


# --------------------------------------------------------------------------------------------
row("Overview")
stat("Events/s", [(f"sum(rate(analytics_events_total{{{IS}}}[{RI}]))", "")], "reqps", w=3,
     desc="Achieved event rate (all types, all outcomes)")
stat("Queries/s", [(f"sum(rate(analytics_queries_total{{{IS}}}[{RI}]))", "")], "reqps", w=3,
     desc="Achieved query rate")
stat("Query p99 (answered)", [(q(0.99, "analytics_query_duration_seconds", sel=OK), "")], "s", w=3,
     desc="p99 of successful queries' latency from the scheduled start (coordinated omission "
          "corrected). Failed and skipped queries are not in it: see p99 including misses")
stat("Query p99 incl. misses", [(q(0.99, "analytics_query_duration_including_misses_seconds"), "")],
     "s", w=3,
     desc="p99 of every query that was due, each failed or skipped one counted as a miss (+Inf "
          "bucket): 10 s (the top bucket) means more than 1% of the queries missed",
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                               {"color": "red", "value": 10}]})
stat("Cache hit ratio: natural / steered", [
    (f"avg(analytics_cache_natural_hit_ratio{{{I}}})", "natural"),
    (f"avg(analytics_cache_hit_ratio{{{I}}})", "steered"),
], "percentunit", w=4, text_mode="value_and_name",
     desc="natural: lookups on the queries' own keys (how full the cache is); steered: with the "
          "one-off keys the steering loop adds to meet CACHE_HIT_TARGET",
     thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                               {"color": "orange", "value": 0.8},
                                               {"color": "green", "value": 0.9}]})
stat("Redis errors/s",
     [(f"sum(rate(analytics_redis_errors_total{{{IS}}}[{RI}])) or on() vector(0)", "")],
     "short", w=4, decimals=2,
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                               {"color": "red", "value": 0.001}]})
stat("Redis target", [(f"max by (endpoint) (analytics_redis_target_info{{{I}}})", "{{endpoint}}")],
     "short", w=4, text_mode="name", desc="Redis endpoint the app currently writes to")

# --------------------------------------------------------------------------------------------
row("Throughput")
ts("Events/s vs target", [
    (f"sum(rate(analytics_events_total{{{IS}}}[{RI}]))", "events/s"),
    (f'sum(analytics_target_rate_per_second{{{I},kind="events"}})', "target"),
], "reqps", desc="Achieved events per second against EVENTS_PER_SECOND", overrides=[dashed("target")])
ts("Queries/s vs target", [
    (f"sum(rate(analytics_queries_total{{{IS}}}[{RI}]))", "queries/s"),
    (f'sum(analytics_target_rate_per_second{{{I},kind="queries"}})', "target"),
], "reqps", desc="Achieved queries per second against QUERIES_PER_SECOND",
   overrides=[dashed("target")])
ts("Events by type and outcome", [
    (f"sum by (type, outcome) (rate(analytics_events_total{{{IS}}}[{RI}]))", "{{type}} {{outcome}}"),
], "reqps", stack=True,
   desc="outcome: acked (reply received), failed (known not applied), unknown (sent, no reply)")

# --------------------------------------------------------------------------------------------
row("Query latency")
ts("Query latency p50 / p95 / p99 by query type and cache outcome (answered)", [
    (q(0.50, "analytics_query_duration_seconds", "query_type, cache", OK), "p50 {{query_type}} {{cache}}"),
    (q(0.95, "analytics_query_duration_seconds", "query_type, cache", OK), "p95 {{query_type}} {{cache}}"),
    (q(0.99, "analytics_query_duration_seconds", "query_type, cache", OK), "p99 {{query_type}} {{cache}}"),
], "s", w=12, h=9, desc="Successful queries, measured from the scheduled start (open-loop pacing: "
                        "includes queueing). Failed ones are in the panel beside")
ts("Query p99: answered, failed, including misses", [
    (q(0.99, "analytics_query_duration_seconds", sel=OK), "p99 answered"),
    (f'({q(0.99, "analytics_query_duration_seconds", sel=ERR)}) >= 0 or on() vector(0)', "p99 failed"),
    (q(0.99, "analytics_query_duration_including_misses_seconds"), "p99 including misses"),
], "s", w=6, h=9,
   desc="A fast failure is no fast answer: failed queries are kept apart. Including misses: every "
        "query due, failed and skipped ones as misses (+Inf); at 10 s (the top bucket) more than "
        "1% missed")
ts("Query p99: scheduled start vs service time", [
    (q(0.99, "analytics_query_duration_seconds", "query_type", OK), "p99 {{query_type}} (from schedule)"),
    (q(0.99, "analytics_query_service_duration_seconds", "query_type", OK), "p99 {{query_type}} (service)"),
], "s", w=6, h=9, desc="Answered queries. A gap between the two means operations started late "
                       "(back-pressure)")
ts("Event latency (acked) and including misses", [
    (q(0.50, "analytics_event_duration_seconds", sel=OK), "p50 acked"),
    (q(0.99, "analytics_event_duration_seconds", sel=OK), "p99 acked"),
    (q(0.999, "analytics_event_duration_seconds", sel=OK), "p99.9 acked"),
    (q(0.99, "analytics_event_duration_including_misses_seconds"), "p99 including misses"),
], "s", w=12, h=9, desc="Event path (INCR + unique-user record), from scheduled start. Including "
                        "misses: failed, unknown and skipped events count as misses (+Inf)")
ts("Queries due by result", [
    (f'sum by (result) (rate(analytics_query_duration_seconds_count{{{IS}}}[{RI}]))', "{{result}}"),
    (f'sum(rate(analytics_skipped_operations_total{{{IS},operation="query"}}[{RI}]))', "skipped"),
], "reqps", w=12, h=9, stack=True,
   desc="Every query that was due: answered (ok), failed (error), skipped (not started)")

# --------------------------------------------------------------------------------------------
row("Redis")
ts("Redis command latency p99 by command", [
    (q(0.99, "analytics_redis_command_duration_seconds", "command"), "{{command}}"),
], "s", w=8, desc="Round trip per command (pipelined connections)")
ts("Redis command latency p50 by command", [
    (q(0.50, "analytics_redis_command_duration_seconds", "command"), "{{command}}"),
], "s", w=8)
ts("Redis commands/s by command", [
    (f"sum by (command) (rate(analytics_redis_commands_total{{{IS}}}[{RI}]))", "{{command}}"),
], "ops", w=8, stack=True)
ts("Redis pool utilization", [
    (f'sum(analytics_redis_connections{{{IS},state="connected"}}) / sum(analytics_redis_pool_size{{{IS}}})',
     "connected / pool size"),
], "percentunit", w=8, minv=0, maxv=1,
   desc="Share of the pool's connections that are up (drops during a cutover, should return to 100%)")
ts("Redis connections by state and in-flight commands", [
    (f"sum by (state) (analytics_redis_connections{{{IS}}})", "{{state}}"),
    (f"sum(analytics_redis_pool_size{{{IS}}})", "pool size"),
    (f"sum(analytics_redis_inflight{{{IS}}})", "in-flight commands"),
], "short", w=8, overrides=[dashed("pool size")])
ts("Reconnects and in-flight operations", [
    (f"sum(rate(analytics_redis_reconnects_total{{{I}}}[{RI}])) or on() vector(0)", "reconnects/s"),
    (f"sum(analytics_inflight_operations{{{IS}}})", "in-flight operations"),
], "short", w=8, desc="In-flight operations are capped by MAX_WORKERS")

# --------------------------------------------------------------------------------------------
# Cluster mode only (--redis-mode cluster): a standalone target leaves these panels empty.
row("Redis Cluster")
ts("Redirections followed by kind", [
    (f"sum by (kind) (rate(analytics_redis_redirects_total{{{IS}}}[{RI}]))", "{{kind}}"),
], "short", w=8,
   desc="Replies that made a command go elsewhere or again, each resent (not errors): moved (slot "
        "owner changed: map refresh), ask (slot migrating), tryagain (multi-key command on a slot "
        "half migrated), clusterdown, loading, masterdown, readonly")
ts("Slot map refreshes", [
    (f"sum by (shard) (rate(analytics_redis_cluster_map_refreshes_total{{{IS}}}[{RI}]))",
     "shard {{shard}}"),
], "short", w=8, desc="Slot maps loaded by each shard's router: at start, after MOVED or "
                      "READONLY (at most one every 500 ms), and every 10 minutes with the run "
                      "declaration")
ts("Slots assigned and covered", [
    (f"max by (state) (analytics_redis_cluster_slots{{{I}}})", "{{state}}"),
], "short", w=8, minv=0, maxv=16384,
   desc="Of 16384: assigned (a primary serves them in the map), covered (their primary answered "
        "the control core's 1 s health check). Covered below 16384: some keys cannot be served")
ts("Commands/s by node", [
    (f"sum by (node) (rate(analytics_redis_node_commands_total{{{I}}}[{RI}]))", "{{node}}"),
], "ops", w=8, stack=True, desc="Commands sent to each primary (all shards), redirected attempts "
                                "included")
ts("Command latency p99 by node", [
    (q(0.99, "analytics_redis_node_command_duration_seconds", "node", I), "{{node}}"),
], "s", w=8, desc="Round trip of each command, by the node it was sent to (all shards)")
ts("Primaries up (health check)", [
    (f"max by (node) (analytics_redis_cluster_node_up{{{I}}})", "{{node}}"),
], "short", w=8, stack=True, minv=0,
   desc="1 per primary of the slot map that answered the last PING (1 s health check), 0 if it "
        "did not or left the map; stacked, the top line is the number of primaries up")

# --------------------------------------------------------------------------------------------
row("Cache")
ts("Cache hit ratio: natural, steered, target, ad-hoc share", [
    (f"avg(analytics_cache_natural_hit_ratio{{{I}}})", "natural (own keys, last 10 s)"),
    (f"avg(analytics_cache_hit_ratio{{{I}}})", "steered (with one-off keys, last 10 s)"),
    (f"avg(analytics_cache_hit_target_ratio{{{I}}})", "target"),
    (f"avg(analytics_cache_adhoc_fraction{{{I}}})", "ad-hoc share"),
], "percentunit", w=12, overrides=[dashed("target")],
   desc="natural: how full the cache really is; its dip after a switch to an empty target is the "
        "cache being rebuilt. steered: what CACHE_HIT_TARGET asks for, met by sending the ad-hoc "
        "share of cacheable queries to one-off keys that always miss")
ts("Queries by cache outcome", [
    (f"sum by (cache) (rate(analytics_queries_total{{{IS}}}[{RI}]))", "{{cache}}"),
], "reqps", w=6, stack=True, desc="hit / miss (read Postgres, then SET) / none (never cached) / error")
ts("Cache warmup refreshes/s", [
    (f"sum(rate(analytics_cache_warmup_refreshes_total{{{IS}}}[{RI}]))", "refreshes/s"),
], "ops", w=6)

# --------------------------------------------------------------------------------------------
row("Errors and skipped operations")
ts("Redis errors by kind", [
    (f"sum by (kind) (rate(analytics_redis_errors_total{{{IS}}}[{RI}])) > 0 or on() vector(0)",
     "{{kind}}"),
], "short", w=8, desc="Only kinds with errors in the range are drawn; 0 when there are none")
ts("Skipped operations by operation and reason", [
    (f"sum by (operation, reason) (rate(analytics_skipped_operations_total{{{IS}}}[{RI}]))",
     "{{operation}} {{reason}}"),
], "short", w=8, desc="late / max_workers / db_backlog (events only): work that was not done, "
                      "never hidden; counted as misses in the p99 including misses")
ts("Failed writes and query errors", [
    (f'sum by (outcome) (rate(analytics_events_total{{{IS},outcome!="acked"}}[{RI}]))',
     "events {{outcome}}"),
    (f'sum(rate(analytics_queries_total{{{IS},cache="error"}}[{RI}]))', "query errors"),
    (f"sum by (op) (rate(analytics_db_read_errors_total{{{IS}}}[{RI}])) or on() vector(0)",
     "db read errors {{op}}"),
], "short", w=8, desc="unknown outcomes are the writes whose fate a verify run settles")

# --------------------------------------------------------------------------------------------
row("Postgres writer")
ts("Rows written/s", [
    (f"sum(rate(analytics_db_rows_written_total{{{I}}}[{RI}]))", "rows/s"),
    (f"sum(rate(analytics_events_total{{{IS}}}[{RI}]))", "events/s"),
], "short", w=6, overrides=[dashed("events/s")])
ts("Batch size (rows per COPY)", [
    (f"histogram_quantile(0.5, sum by (le) (rate(analytics_db_batch_rows_bucket{{{I}}}[{RI}])))", "p50"),
    (f"histogram_quantile(0.99, sum by (le) (rate(analytics_db_batch_rows_bucket{{{I}}}[{RI}])))", "p99"),
    (f"sum(rate(analytics_db_batch_rows_sum{{{I}}}[{RI}])) / sum(rate(analytics_db_batch_rows_count{{{I}}}[{RI}]))",
     "mean"),
], "short", w=6)
ts("Writer queue depth and lag", [
    (f"sum(analytics_db_writer_queue_depth{{{I}}})", "queued rows"),
    (f"max(analytics_db_writer_lag_seconds{{{I}}})", "lag"),
], "short", w=6, overrides=[{"matcher": {"id": "byName", "options": "lag"},
                            "properties": [{"id": "unit", "value": "s"},
                                           {"id": "custom.axisPlacement", "value": "right"}]}])
ts("Postgres query latency p99 by op", [
    (f"histogram_quantile(0.99, sum by (le, op) (rate(analytics_db_query_duration_seconds_bucket{{{I}}}[{RI}])))",
     "p99 {{op}}"),
    (f"histogram_quantile(0.5, sum by (le, op) (rate(analytics_db_query_duration_seconds_bucket{{{I}}}[{RI}])))",
     "p50 {{op}}"),
], "s", w=6, desc="op=copy is the writer's batch COPY; the others are cache-miss reads")
ts("Writer errors and dropped rows", [
    (f"sum(rate(analytics_db_write_errors_total{{{I}}}[{RI}])) or on() vector(0)", "write errors/s"),
    (f"sum(rate(analytics_db_rows_dropped_total{{{I}}}[{RI}])) or on() vector(0)", "rows dropped/s"),
], "short", w=12)
stat("Rows written (total)", [(f"sum(analytics_db_rows_written_total{{{I}}})", "")], "short", w=6, h=8)
stat("Rows dropped (total)", [(f"sum(analytics_db_rows_dropped_total{{{I}}}) or on() vector(0)", "")],
     "short", w=6, h=8,
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                               {"color": "red", "value": 1}]})

# --------------------------------------------------------------------------------------------
row("Business KPIs")
ts("Active organizations", [
    (f"sum(analytics_active_organizations{{{IS}}})", "active organizations"),
], "short", w=8)
ts("Conversion rate", [
    (f"avg(analytics_conversion_rate_ratio{{{I}}})", "conversion rate"),
], "percentunit", w=8, desc="conversions / page views over the last minute")
ts("Engagement: active users", [
    (f"sum(analytics_active_users{{{IS}}})", "active users"),
], "short", w=8)

# --------------------------------------------------------------------------------------------
row("Process")
ts("CPU", [
    (f"sum by (instance) (rate(process_cpu_seconds_total{{{I}}}[{RI}]))", "{{instance}}"),
], "percentunit", w=8, desc="1.0 = one core busy")
ts("Resident memory", [
    (f"sum by (instance) (process_resident_memory_bytes{{{I}}})", "{{instance}}"),
], "bytes", w=8)
stat("Uptime", [(f"time() - max(process_start_time_seconds{{{I}}})", "")], "s", w=8, h=8)

# --------------------------------------------------------------------------------------------
row("Migration")
stat("Current Redis target", [
    (f"max by (endpoint) (analytics_redis_target_info{{{I}}})", "{{endpoint}}"),
], w=8, h=5, text_mode="name")
stat("Target switches", [
    (f"sum(analytics_redis_target_switches_total{{{I}}}) or on() vector(0)", ""),
], w=4, h=5)
stat("Last switch", [
    (f"max(analytics_redis_target_switch_timestamp_seconds{{{I}}}) * 1000 or on() vector(0)", ""),
], "dateTimeFromNow", w=4, h=5,
     mappings=[{"type": "value", "options": {"0": {"text": "never"}}}])
stat("Errors in window (5 m)", [
    (f"sum(increase(analytics_redis_errors_total{{{IS}}}[5m])) or on() vector(0)", ""),
], w=4, h=5, decimals=0,
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                               {"color": "red", "value": 1}]})
stat("Unknown-outcome writes (5 m)", [
    (f'sum(increase(analytics_events_total{{{IS},outcome="unknown"}}[5m])) or on() vector(0)', ""),
], w=4, h=5, decimals=0,
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                               {"color": "orange", "value": 1}]})
ts("Error window: errors/s, switches and p99 latency", [
    (f"sum(rate(analytics_redis_errors_total{{{IS}}}[{RI}])) or on() vector(0)", "redis errors/s"),
    (f'sum(rate(analytics_events_total{{{IS},outcome!="acked"}}[{RI}])) or on() vector(0)',
     "failed+unknown writes/s"),
    (f"sum(changes(analytics_redis_target_switches_total{{{I}}}[1m])) or on() vector(0)", "switches"),
    (q(0.99, "analytics_query_duration_seconds", sel=OK), "query p99"),
    (f"sum(rate(analytics_skipped_operations_total{{{IS}}}[{RI}]))", "skipped/s"),
], "short", w=24, h=9,
   desc="The error window is the span where errors/s is above 0 around a switch (annotations)",
   overrides=[{"matcher": {"id": "byName", "options": "query p99"},
               "properties": [{"id": "unit", "value": "s"},
                              {"id": "custom.axisPlacement", "value": "right"}]}])

dashboard = {
    "uid": "analytics-demo",
    "title": "Analytics Dashboard",
    "description": "analytics-demo: load against target, latency, cache, Redis (and Redis "
                   "Cluster), Postgres writer, business KPIs and Redis migration",
    "tags": ["analytics-demo", "redis", "migration"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "5s",
    "schemaVersion": 38,
    "version": 1,
    "time": {"from": "now-15m", "to": "now"},
    "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
    "templating": {"list": [
        {"name": "instance", "label": "instance", "type": "query", "datasource": DS,
         "query": {"query": "label_values(analytics_target_rate_per_second, instance)",
                   "refId": "instance"},
         "definition": "label_values(analytics_target_rate_per_second, instance)",
         "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1},
        {"name": "shard", "label": "shard", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(analytics_events_total{instance=~"$instance"}, shard)',
                   "refId": "shard"},
         "definition": 'label_values(analytics_events_total{instance=~"$instance"}, shard)',
         "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 3},
    ]},
    "annotations": {"list": [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
         "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
         "type": "dashboard"},
        {"name": "Redis target switch", "datasource": DS, "enable": True,
         "iconColor": "orange", "step": "5s", "titleFormat": "Redis target switch",
         "textFormat": "switch on {{instance}}",
         "expr": f"changes(analytics_redis_target_switches_total{{{I}}}[30s]) > 0"},
    ]},
    "panels": panels,
}

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards",
                       "analytics-dashboard.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dashboard, f, indent=2)
        f.write("\n")
    n = sum(len(p.get("targets", [])) for p in panels)
    print(f"wrote {out}: {len(panels)} panels (rows included), {n} expressions")
