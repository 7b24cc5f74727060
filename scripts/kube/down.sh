#!/usr/bin/env bash
# Stops what up.sh started in RUN_DIR, by recorded pid, newest first: SIGTERM, a second
# SIGTERM after 3 s (the Kubernetes servers then exit at once instead of draining watches
# for a minute), SIGKILL after 5 s. --wipe also removes etcd's data, the PKI and the recorded
# ports, so the next up.sh starts a fresh cluster; logs are kept.
#   usage: down.sh RUN_DIR [--wipe]
set -uo pipefail
run=${1:?usage: down.sh RUN_DIR [--wipe]}
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }
for name in cert-manager kwok scheduler kcm apiserver etcd; do
  file=$run/pid/$name
  [ -f "$file" ] || continue
  pid=$(cat "$file")
  if alive "$pid"; then
    kill "$pid" 2> /dev/null
    for i in $(seq 50); do
      alive "$pid" || break
      [ "$i" = 30 ] && kill "$pid" 2> /dev/null
      sleep 0.1
    done
    alive "$pid" && kill -9 "$pid" 2> /dev/null
  fi
  rm -f "$file"
done
if [ "${2:-}" = --wipe ]; then rm -rf "$run/etcd-data" "$run/pki" "$run/ports.env"; fi
exit 0
