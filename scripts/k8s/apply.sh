#!/usr/bin/env bash
# Deploys an overlay: its namespaces, its sops-encrypted Secrets (decrypted on the fly, only
# into kubectl's stdin, never to a file), then the overlay itself. Extra arguments go to every
# kubectl apply, e.g. --dry-run=server or --kubeconfig PATH.
#   scripts/k8s/apply.sh dev|production [kubectl apply flags...]
#   env: KUBECTL (default kubectl), SOPS (default .tools/bin/sops, else sops on PATH),
#        SOPS_AGE_KEY_FILE (dev: defaults to the committed DEV-ONLY key; production: yours)
# cert-manager must be installed first (its namespace holds the CA issuer's Secret).
set -euo pipefail
cd "$(dirname "$0")/../.."
overlay=${1:?usage: scripts/k8s/apply.sh dev|production [kubectl apply flags...]}
shift
dir=k8s/overlays/$overlay
[ -f "$dir/kustomization.yaml" ] || { echo "apply.sh: no overlay $dir" >&2; exit 2; }
KUBECTL=${KUBECTL:-kubectl}
if [ -z "${SOPS:-}" ]; then
  if [ -x .tools/bin/sops ]; then SOPS=.tools/bin/sops; else SOPS=sops; fi
fi
if [ "$overlay" = dev ] && [ -z "${SOPS_AGE_KEY_FILE:-}" ]; then
  export SOPS_AGE_KEY_FILE=$dir/DEV-ONLY-age-key.txt # DEV ONLY: a committed, public key
fi

"$KUBECTL" apply "$@" -f k8s/base/namespaces.yaml
# Decrypt first, apply only if that worked: a half-decrypted stream never reaches kubectl.
secrets=$("$SOPS" decrypt "$dir/secrets.enc.yaml")
printf '%s\n' "$secrets" | "$KUBECTL" apply "$@" -f -
"$KUBECTL" apply "$@" -k "$dir"
