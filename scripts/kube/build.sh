#!/usr/bin/env bash
# Builds the test Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, cert-manager controller + CRDs) from the Go module proxy
# into a versioned cache folder outside the clone, so a warm run skips every build.
# Prints the folder. Cold: about 17 minutes on 2 cores; warm: under a second.
#   env: LICENSING_KUBE_CACHE (default /var/cache/licensing/kube-<versions>)
set -euo pipefail

KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
CERT_MANAGER_VERSION=v1.11.5
LAYOUT=1 # bump when the cache's contents change shape

BIN=${LICENSING_KUBE_CACHE:-/var/cache/licensing/kube-$KUBE_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION-cm$CERT_MANAGER_VERSION-$LAYOUT}
WORK=$BIN/.work
mkdir -p "$BIN" "$WORK"
log() { echo "kube-build: $*" >&2; }
timed() { local s; s=$(date +%s); "$@"; log "$1 took $(( $(date +%s) - s ))s"; }
export CGO_ENABLED=0

build_etcd() {
  # etcd's server module has replace lines, so `go install` refuses it: build a wrapper main.
  local w=$WORK/etcd-$ETCD_VERSION
  mkdir -p "$w"
  if [ ! -f "$w/go.sum" ]; then
    printf 'module etcdwrap\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$w/go.mod"
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > "$w/main.go"
    (cd "$w" && go mod tidy)
  fi
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" . && mv "$BIN/etcd.tmp" "$BIN/etcd")
}

build_kubernetes() {
  # k8s.io/kubernetes refers to its staging modules by ./staging paths: a wrapper module
  # replaces each with its published v0.<minor>.<patch> release.
  local w=$WORK/kubernetes-$KUBE_VERSION staging_version=v0.${KUBE_VERSION#v1.} gomod
  mkdir -p "$w"
  if [ ! -f "$w/go.sum" ]; then
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      printf 'module k8swrap\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$KUBE_VERSION"
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u |
        while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
      printf ')\n'
    } > "$w/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport (\n' > "$w/tools.go"
    for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$t" >> "$w/tools.go"
    done
    printf ')\n' >> "$w/tools.go"
    (cd "$w" && go mod tidy)
  fi
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  for t in "$@"; do
    (cd "$w" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$t.tmp" "k8s.io/kubernetes/cmd/$t" && mv "$BIN/$t.tmp" "$BIN/$t")
    log "built $t"
  done
}

build_kwok() {
  GOBIN=$WORK/kwok-bin go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # Without Stage objects kwok exits "no stages found": take the fast set from its module zip.
  local dir
  dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$dir/kustomize/stage/$f"
  done > "$BIN/kwok-stages.yaml"
  mv "$WORK/kwok-bin/kwok" "$BIN/kwok"
}

build_cert_manager() {
  # v1.11 is the newest line whose controller lives in the main module the proxy serves;
  # its go.mod has replace lines, so build through a wrapper that copies them.
  local w=$WORK/cert-manager-$CERT_MANAGER_VERSION gomod dir
  mkdir -p "$w"
  if [ ! -f "$w/go.sum" ]; then
    printf 'module cmwrap\n\ngo 1.19\n\nrequire github.com/cert-manager/cert-manager %s\n' "$CERT_MANAGER_VERSION" > "$w/go.mod"
    gomod=$(go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    grep -E '^replace ' "$gomod" >> "$w/go.mod" || true
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/cert-manager/cert-manager/cmd/controller"\n' > "$w/tools.go"
    (cd "$w" && go mod tidy)
  fi
  (cd "$w" && go build -trimpath -ldflags "-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION" \
     -o "$BIN/cert-manager-controller.tmp" github.com/cert-manager/cert-manager/cmd/controller)
  dir=$(cd "$w" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
  rm -rf "$BIN/cert-manager-crds.tmp"; mkdir -p "$BIN/cert-manager-crds.tmp"
  for f in "$dir"/deploy/crds/crd-*.yaml; do
    grep -v -E '\{\{' "$f" > "$BIN/cert-manager-crds.tmp/$(basename "$f")"   # Helm template labels
  done
  rm -rf "$BIN/cert-manager-crds"; mv "$BIN/cert-manager-crds.tmp" "$BIN/cert-manager-crds"
  mv "$BIN/cert-manager-controller.tmp" "$BIN/cert-manager-controller"
}

[ -x "$BIN/etcd" ] || timed build_etcd
missing=()
for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do [ -x "$BIN/$t" ] || missing+=("$t"); done
[ ${#missing[@]} -eq 0 ] || timed build_kubernetes "${missing[@]}"
[ -x "$BIN/kwok" ] || timed build_kwok
{ [ -x "$BIN/cert-manager-controller" ] && [ -d "$BIN/cert-manager-crds" ]; } || timed build_cert_manager
echo "$BIN"
