#!/usr/bin/env bash
# Browser test of the built-in dashboard with headless Chromium:
#   browser-test.sh http://127.0.0.1:PORT/
# Saves a screenshot (SCREENSHOT, default /tmp/analytics-dashboard.png), then dumps the DOM
# twice a few seconds apart and asserts the page shows live numbers: #events-rate is a positive
# number, the page polled /api/status, and the event total changed between the two dumps.
set -euo pipefail
URL="${1:?usage: browser-test.sh URL}"
SCREENSHOT="${SCREENSHOT:-/tmp/analytics-dashboard.png}"
CHROME="$(command -v chromium || command -v chromium-browser)"
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --disable-dev-shm-usage --user-data-dir="$PROFILE" "--window-size=1400,1000"
    --virtual-time-budget=5000)

timeout 90 "$CHROME" "${FLAGS[@]}" --screenshot="$SCREENSHOT" "$URL" >/dev/null 2>&1 \
    || { echo "chromium screenshot failed" >&2; exit 1; }
[ -s "$SCREENSHOT" ] || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot: $SCREENSHOT ($(stat -c %s "$SCREENSHOT") bytes)"

dump() { timeout 90 "$CHROME" "${FLAGS[@]}" --dump-dom "$URL" 2>/dev/null; }
dump >"$PROFILE/dom1.html"
sleep 3
dump >"$PROFILE/dom2.html"
python3 - "$PROFILE/dom1.html" "$PROFILE/dom2.html" <<'PY'
import re, sys
def grab(path):
    html = open(path).read()
    def text(i):
        m = re.search(r'id="%s"[^>]*>([^<]*)<' % i, html)
        return m.group(1).strip() if m else None
    polls = re.search(r'data-polls="(\d+)"', html)
    return {"rate": text("events-rate"), "qrate": text("queries-rate"), "total": text("events-total"),
            "p99": text("lat-p99"), "hit": text("hit-ratio"), "conn": text("conn"),
            "polls": int(polls.group(1)) if polls else 0}
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
if a["total"] == b["total"]:
    errors.append("event total did not change between dumps (%s)" % a["total"])
if errors:
    sys.exit("browser test FAILED: " + "; ".join(sorted(set(errors))))
print("browser test OK: live numbers, event total %s -> %s" % (a["total"], b["total"]))
PY
