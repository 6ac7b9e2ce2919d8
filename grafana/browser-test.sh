#!/usr/bin/env bash
# Browser test of the built-in dashboard with headless Chromium:
#   browser-test.sh http://127.0.0.1:PORT/
# Saves a screenshot (SCREENSHOT, default /tmp/analytics-dashboard.png; WINDOW_SIZE, default
# 1400,1000), then dumps the DOM twice a few seconds apart and asserts the page shows live
# numbers: #events-rate is a positive number, the page polled /api/status, and the event total
# changed between the two dumps.
# EXPECT_CLUSTER_NODES=0 (a standalone target): the Redis Cluster card must be hidden;
# EXPECT_CLUSTER_NODES=N (an app in cluster mode): shown, with N primary rows, each "up" with a
# PING latency, and 16,384 slots covered. Unset: the card is not checked.
set -euo pipefail
URL="${1:?usage: browser-test.sh URL}"
SCREENSHOT="${SCREENSHOT:-/tmp/analytics-dashboard.png}"
CHROME="$(command -v chromium || command -v chromium-browser)"
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --disable-dev-shm-usage --user-data-dir="$PROFILE" "--window-size=${WINDOW_SIZE:-1400,1000}"
    --virtual-time-budget=5000)

timeout 90 "$CHROME" "${FLAGS[@]}" --screenshot="$SCREENSHOT" "$URL" >/dev/null 2>&1 \
    || { echo "chromium screenshot failed" >&2; exit 1; }
[ -s "$SCREENSHOT" ] || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot: $SCREENSHOT ($(stat -c %s "$SCREENSHOT") bytes)"

dump() { timeout 90 "$CHROME" "${FLAGS[@]}" --dump-dom "$URL" 2>/dev/null; }
dump >"$PROFILE/dom1.html"
sleep 3
dump >"$PROFILE/dom2.html"
EXPECT_CLUSTER_NODES="${EXPECT_CLUSTER_NODES:-}" python3 - "$PROFILE/dom1.html" "$PROFILE/dom2.html" <<'PY'
import os, re, sys
def grab(path):
    html = open(path).read()
    def text(i):
        m = re.search(r'id="%s"[^>]*>([^<]*)<' % i, html)
        return m.group(1).strip() if m else None
    polls = re.search(r'data-polls="(\d+)"', html)
    card = re.search(r'<section[^>]*id="cluster-card"[^>]*>', html)
    nodes = re.findall(r'<tr class="cluster-node" data-node="([^"]*)">.*?class="pill (\w+)"[^>]*>([^<]*)<'
                       r'/span></td><td>([^<]*)</td>', html)
    return {"rate": text("events-rate"), "qrate": text("queries-rate"), "total": text("events-total"),
            "p99": text("lat-p99"), "hit": text("hit-ratio"), "conn": text("conn"),
            "polls": int(polls.group(1)) if polls else 0,
            "cluster_card": None if not card else "hidden" if "hidden" in card.group(0) else "shown",
            "covered": text("c-covered"), "nodes": [(n, st, ms) for n, _cls, st, ms in nodes]}
a, b = grab(sys.argv[1]), grab(sys.argv[2])
print("first dump: ", a)
print("second dump:", b)
errors = []
for d in (a, b):
    if d["rate"] in (None, "", "-"):
        errors.append("#events-rate missing or empty")
    elif float(d["rate"].replace(",", "")) <= 0:
        errors.append("#events-rate is not positive")
    if d["polls"] < 1:
        errors.append("the page never loaded /api/status")
    if d["conn"] != "live":
        errors.append("connection pill is %r, not 'live'" % d["conn"])
    want = os.environ.get("EXPECT_CLUSTER_NODES", "")
    if want == "":
        continue
    if int(want) == 0:
        if d["cluster_card"] != "hidden":
            errors.append("the Redis Cluster card is %s on a standalone target" % d["cluster_card"])
        continue
    if d["cluster_card"] != "shown":
        errors.append("the Redis Cluster card is %s in cluster mode" % d["cluster_card"])
    if len(d["nodes"]) != int(want):
        errors.append("%d primary rows in the cluster card, not %s" % (len(d["nodes"]), want))
    for node, status, ping in d["nodes"]:
        if status != "up" or ping in ("", "-"):
            errors.append("primary %s: status %r, PING %r" % (node, status, ping))
    if d["covered"] != "16,384":
        errors.append("slots covered %r, not 16,384" % d["covered"])
if a["total"] == b["total"]:
    errors.append("event total did not change between dumps (%s)" % a["total"])
if errors:
    sys.exit("browser test FAILED: " + "; ".join(sorted(set(errors))))
print("browser test OK: live numbers, event total %s -> %s; cluster card %s%s" % (
    a["total"], b["total"], b["cluster_card"],
    ", primaries " + " ".join("%s=%s" % (n, s) for n, s, _ in b["nodes"]) if b["nodes"] else ""))
PY
