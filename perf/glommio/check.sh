#!/usr/bin/env bash
# Checks the carried glommio against the pristine release and rewrites its three patches.
#
#   bash perf/glommio/check.sh          diff the carried copy against glommio 0.9.0 from
#                                        cargo's registry (src/iou -> coop-taskrun.patch,
#                                        src/executor -> no-park-with-work.patch,
#                                        src/sys -> reactor-turn.patch; any other
#                                        change in src/ is an error; every other difference
#                                        must be a trimmed file, listed)
#
# The pristine copy is cargo's download of glommio 0.9.0 (~/.cargo/registry/src/*/glommio-0.9.0):
# with the [patch] entry in place cargo no longer fetches it, so `cargo fetch` it from a checkout
# without the entry (or any other project) first when it is missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=0.9.0
CARRIED="$HERE/glommio-$VERSION"
PRISTINE="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/glommio-$VERSION 2>/dev/null | head -1 || true)"
[ -n "$PRISTINE" ] && [ -d "$PRISTINE/src" ] || {
    echo "glommio $VERSION is not in cargo's registry cache: fetch it first (see the header)" >&2
    exit 1
}
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/a" "$TMP/b"
cp -r "$PRISTINE/src" "$TMP/a/src"
cp -r "$CARRIED/src" "$TMP/b/src"
# (No timestamps on the ---/+++ lines: a patch only changes when the code does.)
patch_of() { # DIR PATCH: the diff of src/DIR into PATCH
    (cd "$TMP" && diff -ruN "a/src/$1" "b/src/$1" | sed -E 's/^(---|\+\+\+) ([^\t]+)\t.*/\1 \2/' \
        >"$HERE/$2") || true
    echo "$2: $(grep -c '^@@' "$HERE/$2") hunks in $(grep -c '^+++ ' "$HERE/$2") file(s)"
}
patch_of iou coop-taskrun.patch
patch_of executor no-park-with-work.patch
patch_of sys reactor-turn.patch
other="$(cd "$TMP" && diff -rq a/src b/src --exclude iou --exclude executor --exclude sys || true)"
[ -z "$other" ] || { echo "changes in src/ outside the three patches:" >&2; echo "$other" >&2; exit 1; }
# Outside src/: only trimmed files (benches, tests, liburing's tests/docs/packaging), the
# [[bench]] entries of Cargo.toml and the added licence files may differ.
(diff -rq "$PRISTINE" "$CARRIED" --exclude src || true) | sed "s|$PRISTINE|pristine|; s|$CARRIED|carried|"
