#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432; start the local cluster if it is down.
# Exit 0 when one answers, 1 (with the reason printed) when none can be started.
set -u
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: pg_isready is not installed, so there is no local PostgreSQL to start."
  exit 1
fi
ready && exit 0
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for v in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>&1 || true
  done
  for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
fi
echo "ensure-postgres: no PostgreSQL server answers on 127.0.0.1:5432 and none could be started."
exit 1
