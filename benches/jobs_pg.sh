#!/usr/bin/env bash
# jobs_bench on a PostgreSQL of its own, with pg_stat_statements: emails/s, then where the
# server's time went, statement by statement. The machine's PostgreSQL is not touched: this
# starts a cluster in a temporary folder on an ephemeral port (as the postgres user, with the
# server binaries of the machine's PostgreSQL package) and removes it at the end.
#
#   benches/jobs_pg.sh [RUNS] [JOBS] [WORKERS]
#
# Build first: cargo build --release --example jobs_bench (JOBS_BENCH names another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
JOBS=${2:-5000}
WORKERS=${3:-8}
BIN=${MAILPUSH_TEST_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
BENCH=${JOBS_BENCH:-target/release/examples/jobs_bench}
[ -x "$BENCH" ] || { echo "build $BENCH first" >&2; exit 1; }

DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
cleanup() { as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT

as_postgres "$BIN/initdb" -A trust -U postgres --no-sync -D "$DIR/data" >/dev/null
as_postgres "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w start -o \
  "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR \
   -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on ${JOBS_PG_SERVER_OPTS:-}" >/dev/null
URL=postgres://postgres@127.0.0.1:$PORT/postgres
psql -q "$URL" -c 'CREATE EXTENSION pg_stat_statements'

for _ in $(seq "$RUNS"); do
  MAILPUSH_DATABASE__URL=$URL "$BENCH" "$JOBS" "$WORKERS" | tr '\n' ' '
  echo
done

TOTAL=$((RUNS * JOBS))
echo "Server time per email, by statement (all $RUNS runs, $TOTAL emails):"
psql -q "$URL" -P pager=off -c "
  SELECT round((total_exec_time + total_plan_time)::numeric * 1000 / $TOTAL, 1) AS us_per_email,
         calls, round(mean_exec_time::numeric * 1000, 1) AS us_per_call,
         left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
    FROM pg_stat_statements
   WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'postgres')
   ORDER BY total_exec_time + total_plan_time DESC LIMIT 12"
echo "Row updates of the jobs table, and how many were HOT (no index entries written):"
psql -q "$URL" -P pager=off -c "
  SELECT n_tup_ins AS inserted, n_tup_upd AS updated, n_tup_hot_upd AS hot,
         round(100.0 * n_tup_hot_upd / greatest(n_tup_upd, 1), 1) AS hot_pct
    FROM pg_stat_user_tables WHERE relname = 'jobs'"
