#!/usr/bin/env python3
"""Evaluates every PromQL expression of Grafana dashboard JSON files against a Prometheus.

    eval-dashboards.py --prometheus http://127.0.0.1:9090 --instance host:port \
        [--row-instance "Redis Cluster=host:port"] dash.json...

Each panel expression runs twice: template variables as `.*` (the "All" choice) and as the real
values (--instance, first shard found). The panels of a row named in --row-instance take that
instance as their real value instead (the Redis Cluster row: an app running in cluster mode; a
standalone one has no cluster series). Fails when a query errors or returns no finite value.
Template variable queries (label_values) must return values; annotation queries must evaluate
without error (empty is fine). Prints a summary line with the counts.
"""
import argparse
import json
import math
import re
import sys
import urllib.parse
import urllib.request


def query(base, expr):
    data = urllib.parse.urlencode({"query": expr}).encode()
    try:
        with urllib.request.urlopen(base + "/api/v1/query", data=data, timeout=20) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"]["result"], None


def finite(result):
    for s in result:
        try:
            if math.isfinite(float(s["value"][1])):
                return True
        except (KeyError, ValueError, TypeError):
            pass
    return False


def panels_of(dash):
    """Every panel with the title of the row it is under ("" before the first row)."""
    row = ""
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            row = p.get("title", "")
        yield p, row
        for sub in p.get("panels", []):
            yield sub, row


def substitute(expr, values):
    expr = expr.replace("$__rate_interval", "30s").replace("${__rate_interval}", "30s")
    expr = expr.replace("$__interval", "5s").replace("${__interval}", "5s")
    for name, val in values.items():
        expr = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}|\$" + name + r"\b", lambda _m: val, expr)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr}")
    return expr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--instance", required=True)
    ap.add_argument("--row-instance", action="append", default=[], metavar="ROW=INSTANCE",
                    help="the real $instance of the panels under row ROW")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    base = a.prometheus.rstrip("/")
    shards, err = query(base, "group by (shard) (analytics_events_total)")
    shard = shards[0]["metric"]["shard"] if shards else "0"

    def real(instance):
        return {"instance": re.escape(instance).replace("\\", "\\\\"), "shard": shard}

    variants = {"all": {"instance": ".*", "shard": ".*"}, "real": real(a.instance)}
    row_real = {}
    for spec in a.row_instance:
        row, sep, instance = spec.rpartition("=")
        if not sep or not row or not instance:
            sys.exit(f"--row-instance {spec!r}: expected ROW=INSTANCE")
        row_real[row] = real(instance)
    rows_seen = set()
    failures, n_panel, n_eval, n_var, n_ann = [], 0, 0, 0, 0
    for path in a.files:
        dash = json.load(open(path))
        title = dash.get("title", path)
        # template variables
        for v in dash.get("templating", {}).get("list", []):
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"label_values\((.*),\s*(\w+)\)\s*$", q or "")
            if not m:
                continue
            n_var += 1
            sel = substitute(m.group(1), variants["all"])
            res, err = query(base, f"group by ({m.group(2)}) ({sel})")
            vals = sorted(s["metric"].get(m.group(2), "") for s in res or [])
            if err or not vals:
                failures.append(f"{title}: variable ${v['name']}: {err or 'no values'}")
            else:
                print(f"  ok  variable ${v['name']} = {vals}")
        # annotations
        for ann in dash.get("annotations", {}).get("list", []):
            if not ann.get("expr"):
                continue
            n_ann += 1
            res, err = query(base, substitute(ann["expr"], variants["all"]))
            if err:
                failures.append(f"{title}: annotation {ann.get('name')}: {err}")
            else:
                print(f"  ok  annotation {ann.get('name')!r} ({len(res)} series now)")
        # panels
        for p, row in panels_of(dash):
            rows_seen.add(row)
            for t in p.get("targets", []):
                expr = t.get("expr")
                if not expr:
                    continue
                n_panel += 1
                for vname, vals in variants.items():
                    if vname == "real":
                        vals = row_real.get(row, vals)
                    e = substitute(expr, vals)
                    n_eval += 1
                    res, err = query(base, e)
                    if err:
                        failures.append(f"{title} / {p['title']} [{vname}]: ERROR {err}\n      {e}")
                    elif not finite(res):
                        failures.append(f"{title} / {p['title']} [{vname}]: NO DATA\n      {e}")
                    else:
                        if vname == "all":
                            v = next(float(s["value"][1]) for s in res
                                     if math.isfinite(float(s["value"][1])))
                            print(f"  ok  {p['title']} [{t.get('refId')}]: {len(res)} series, e.g. {v:.6g}")
    for row in sorted(set(row_real) - rows_seen):
        failures.append(f"--row-instance names row {row!r}, which no dashboard has")
    for f in failures:
        print("  FAIL " + f)
    print(f"\n{n_panel} panel expressions ({n_eval} evaluations: All and real variable values), "
          f"{n_var} template variables, {n_ann} annotation queries; {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
