#!/usr/bin/env bash
# buf breaking against every released contract: the buf images committed under contracts/
# (contracts/vX.Y.Z.binpb, written when the release was tagged; see README "Compatibility").
# They are files, not git refs, so the check works in a fresh shallow clone without tags.
# BUF_BREAKING_AGAINST=<git ref> compares against that commit's protos/ as well.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
images=(contracts/v*.binpb)
if [ ${#images[@]} -eq 0 ]; then
  echo "buf breaking: no released contract under contracts/; nothing to compare"
fi
for image in "${images[@]}"; do
  buf breaking --against "$image"
  echo "buf breaking: no breaking changes against $image"
done
if [ -n "${BUF_BREAKING_AGAINST:-}" ]; then
  base=$BUF_BREAKING_AGAINST
  buf breaking --against ".git#ref=$(git rev-parse "$base")"
  echo "buf breaking: no breaking changes against $base"
fi
