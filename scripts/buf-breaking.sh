#!/usr/bin/env bash
# buf breaking against the previous commit of main (skipped when it had no contract yet).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BUF_BREAKING_AGAINST:-HEAD~1}
if ! git rev-parse -q --verify "$base^{commit}" >/dev/null || ! git cat-file -e "$base:buf.yaml" 2>/dev/null; then
  echo "buf breaking: $base has no buf.yaml yet; nothing to compare"
  exit 0
fi
buf breaking --against ".git#ref=$(git rev-parse "$base")"
echo "buf breaking: no breaking changes against $base"
