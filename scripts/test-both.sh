#!/usr/bin/env bash
# The whole suite on SQLite and on PostgreSQL at once, one pytest each: on this 2-core machine
# the two runs one after the other took 18 minutes when the host was slow, near CI's 20. Each
# run's output is printed whole when both are done; the exit status fails if either failed.
# (Each PostgreSQL test session works in a database of its own; servers the tests start take
# free ports: the two runs share nothing.)
set -u
cd "$(dirname "$0")/.."
BIN=.venv/bin
PG_ADMIN_URL=${PG_ADMIN_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

$BIN/pytest -q -p no:cacheprovider >"$out/sqlite" 2>&1 &
sqlite_pid=$!
if scripts/ensure-postgres.sh; then
  TEST_DATABASE_URL=$PG_ADMIN_URL $BIN/pytest -q -p no:cacheprovider >"$out/postgres" 2>&1 &
  postgres_pid=$!
else
  echo "SKIPPED the PostgreSQL run: no PostgreSQL server could be started (see above)." >"$out/postgres"
  postgres_pid=
fi

wait "$sqlite_pid"
sqlite_status=$?
postgres_status=0
if [ -n "$postgres_pid" ]; then
  wait "$postgres_pid"
  postgres_status=$?
fi

echo "=== SQLite (exit $sqlite_status)"
cat "$out/sqlite"
echo "=== PostgreSQL (exit $postgres_status)"
cat "$out/postgres"
[ "$sqlite_status" -eq 0 ] && [ "$postgres_status" -eq 0 ]
