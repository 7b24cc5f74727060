#!/usr/bin/env bash
# Installs the TypeScript client's pinned npm packages (clients/typescript/package-lock.json)
# with `npm ci` and compiles it (tsc). `make generate` needs the protoc-gen-es this installs.
# Idempotent: reinstalls only when the lockfile is newer than the install.
set -euo pipefail
cd "$(dirname "$0")/../../clients/typescript"
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing Debian's nodejs and npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# allowPartialTrustChain (the enclave pin) is in Node.js 20.18 and later.
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)' \
  || { echo "node-client: Node.js $(node --version) is too old (20.18 or newer)" >&2; exit 1; }
stamp=node_modules/.installed
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  echo "setup: installing the TypeScript client's npm packages (npm ci, pinned by package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
npm run --silent build
