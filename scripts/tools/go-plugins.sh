#!/usr/bin/env bash
# Installs the Go protoc plugins that `buf generate` drives for clients/go (protoc-gen-go,
# protoc-gen-go-grpc) from the Go module proxy, at pinned versions, into a versioned cache
# folder outside the clone, so a warm run only checks. Prints the folder's bin directory.
#   env: LICENSING_GO_PLUGINS_CACHE (default /var/cache/licensing/go-plugins-<versions>)
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12       # google.golang.org/protobuf
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2    # google.golang.org/grpc/cmd/protoc-gen-go-grpc

DIR=${LICENSING_GO_PLUGINS_CACHE:-/var/cache/licensing/go-plugins-go$PROTOC_GEN_GO_VERSION-grpc$PROTOC_GEN_GO_GRPC_VERSION}
BIN=$DIR/bin
if [ ! -x "$BIN/protoc-gen-go" ] || [ ! -x "$BIN/protoc-gen-go-grpc" ]; then
  echo "go-plugins: installing protoc-gen-go $PROTOC_GEN_GO_VERSION and protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION into $BIN" >&2
  mkdir -p "$BIN"
  # GOFLAGS=-mod=readonly in the caller's environment does not matter to `go install x@v`.
  CGO_ENABLED=0 GOBIN="$BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  CGO_ENABLED=0 GOBIN="$BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi
echo "$BIN"
