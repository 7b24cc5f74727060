#!/usr/bin/env bash
# Installs (if needed) and starts a local PostgreSQL, and makes the role the tests use.
# Prints the admin URL that tests read from LICENSING_TEST_POSTGRES_URL.
set -euo pipefail
# Only the URL goes to stdout; everything the tools print goes to stderr.
exec 3>&1 1>&2
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
  # A server killed moments ago may still hold its socket lock: retry briefly.
  for attempt in 1 2 3 4 5; do
    pg_ctlcluster "$version" main start 3>&- && break
    [ "$attempt" = 5 ] && exit 1
    sleep 2
  done
fi
for _ in $(seq 1 50); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
su postgres -c "psql -qAt" <<'SQL' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'licensing_test') THEN
    CREATE ROLE licensing_test LOGIN CREATEDB PASSWORD 'licensing_test';
  END IF;
END $$;
SQL
echo "postgresql://licensing_test:licensing_test@127.0.0.1:5432/postgres" >&3
