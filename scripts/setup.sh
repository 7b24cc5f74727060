#!/usr/bin/env bash
# Installs everything the server and its tests need on a fresh Debian machine:
# Debian packages, a virtualenv with pinned Python dependencies, grpcurl, sops and age, and (for tests) the
# Kubernetes test control plane's binaries in a cache outside the clone (scripts/kube/build.sh:
# about 17 minutes the first time on 2 cores, instant afterwards).
# Idempotent: a second run only checks.
#   scripts/setup.sh          everything (tests)
#   scripts/setup.sh --run    only what `make run` needs
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

run_pkgs=(python3 python3-venv python3-dev gcc pkg-config libtss2-dev swtpm swtpm-tools openssl jq ca-certificates)
test_pkgs=(postgresql tpm2-tools golang-go git)
pkgs=("${run_pkgs[@]}")
[ "$mode" = "--run" ] || pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  # golang-go is only needed when no Go toolchain is on PATH already.
  if [ "$p" = golang-go ] && command -v go >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing Python dependencies (pinned by constraints.txt)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi

if [ "$mode" != "--run" ]; then
  GRPCURL_VERSION=v1.9.4
  if [ ! -x .tools/bin/grpcurl ]; then
    echo "setup: installing grpcurl $GRPCURL_VERSION from the Go module proxy"
    GOBIN="$PWD/.tools/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  fi
  # sops + age: the Kubernetes secrets are committed only encrypted (k8s/README.md).
  SOPS_VERSION=v3.13.3
  AGE_VERSION=v1.3.2
  if [ ! -x .tools/bin/sops ] || ! .tools/bin/sops --version --disable-version-check 2>/dev/null | grep -q "${SOPS_VERSION#v}"; then
    echo "setup: installing sops $SOPS_VERSION from the Go module proxy"
    GOBIN="$PWD/.tools/bin" go install "github.com/getsops/sops/v3/cmd/sops@$SOPS_VERSION"
  fi
  if [ ! -x .tools/bin/age ] || [ ! -x .tools/bin/age-keygen ] || [ "$(.tools/bin/age --version)" != "$AGE_VERSION" ]; then
    echo "setup: installing age $AGE_VERSION from the Go module proxy"
    GOBIN="$PWD/.tools/bin" go install "filippo.io/age/cmd/age@$AGE_VERSION" "filippo.io/age/cmd/age-keygen@$AGE_VERSION"
  fi
  # grpc_health_probe: the manifests' exec probes (TLS); tests/deploy runs them for real.
  HEALTH_PROBE_VERSION=v0.4.63
  if [ ! -x .tools/bin/grpc-health-probe ] || ! .tools/bin/grpc-health-probe -version 2>&1 | grep -q "${HEALTH_PROBE_VERSION#v}"; then
    echo "setup: installing grpc-health-probe $HEALTH_PROBE_VERSION from the Go module proxy"
    GOBIN="$PWD/.tools/bin" go install "github.com/grpc-ecosystem/grpc-health-probe@$HEALTH_PROBE_VERSION"
  fi
  # ghz: the gRPC load generator bench/cheap_calls_bench.py drives the frontend with (issue 12).
  GHZ_VERSION=v0.93.0
  if [ ! -x .tools/bin/ghz ]; then
    echo "setup: installing ghz $GHZ_VERSION from the Go module proxy"
    GOBIN="$PWD/.tools/bin" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
  fi
  # The Kubernetes test control plane (tests/kube): built once into LICENSING_KUBE_CACHE.
  scripts/tools/go-plugins.sh >/dev/null # Go client: protoc-gen-go, protoc-gen-go-grpc for buf
  kube_bin=$(scripts/kube/build.sh)
  echo "setup: Kubernetes test binaries in $kube_bin"
fi

# TypeScript client (clients/typescript): npm ci from its lockfile, then tsc.
[ "$mode" = "--run" ] || scripts/tools/node-client.sh
