#!/usr/bin/env bash
# Stops what up.sh started in RUN_DIR, by recorded pid, newest first (SIGTERM, then SIGKILL
# after 5 s). --wipe also removes etcd's data, the PKI and the recorded ports, so the next
# up.sh starts a fresh cluster; logs are kept.
#   usage: down.sh RUN_DIR [--wipe]
set -uo pipefail
run=${1:?usage: down.sh RUN_DIR [--wipe]}
for name in cert-manager kwok scheduler kcm apiserver etcd; do
  file=$run/pid/$name
  [ -f "$file" ] || continue
  pid=$(cat "$file")
  if kill "$pid" 2> /dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null
  fi
  rm -f "$file"
done
if [ "${2:-}" = --wipe ]; then rm -rf "$run/etcd-data" "$run/pki" "$run/ports.env"; fi
exit 0
