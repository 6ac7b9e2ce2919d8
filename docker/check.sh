#!/usr/bin/env bash
# Static checks of docker/ without a Docker engine (make check-docker; also run by
# make test-dashboards): promtool check config, docker-compose config, the seccomp profile
# (valid JSON, Docker-default policy, io_uring allowed, not unconfined), Dockerfile basics.
# Installs Debian's prometheus (promtool) and docker-compose packages when missing (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

need=()
command -v promtool >/dev/null || need+=(prometheus)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    need+=(docker-compose)
fi
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "missing ${need[*]}: install them (or run as root)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "promtool check config docker/prometheus.yml"
promtool check config prometheus.yml

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
echo "${COMPOSE[*]} config (docker/docker-compose.yml)"
out="$(SECCOMP_PROFILE="$PWD/seccomp/io_uring.json" "${COMPOSE[@]}" -f docker-compose.yml config)"
for svc in app postgres redis redis-target prometheus grafana; do
    grep -q "^  $svc:" <<<"$out" || { echo "service $svc missing from the compose file" >&2; exit 1; }
done
echo "  services: app postgres redis redis-target prometheus grafana"

echo "seccomp profile docker/seccomp/io_uring.json"
python3 - <<'PY'
import json
p = json.load(open("seccomp/io_uring.json"))
assert p["defaultAction"] == "SCMP_ACT_ERRNO", "default action must deny"
allowed = {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}
for s in ("io_uring_setup", "io_uring_enter", "io_uring_register", "read", "write", "epoll_wait", "mmap"):
    assert s in allowed, f"{s} not allowed"
for s in ("mount", "ptrace", "kexec_load", "init_module", "unshare", "setns", "bpf"):
    assert s not in allowed, f"{s} must stay blocked"
print(f"  {len(allowed)} syscalls allowed unconditionally, io_uring included, privileged ones blocked")
PY
grep -Eq 'seccomp[=:] *unconfined' docker-compose.yml && { echo "compose file must not use seccomp unconfined" >&2; exit 1; }

echo "Dockerfile"
grep -q '^FROM rust:.* AS build' Dockerfile
grep -q '^FROM debian:bookworm-slim' Dockerfile
grep -q '^USER analytics' Dockerfile
grep -q 'cargo build --release' Dockerfile
echo "  multi-stage release build, debian:bookworm-slim runtime, non-root user"
echo "docker checks OK"
