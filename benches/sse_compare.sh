#!/usr/bin/env bash
# Interleaved EventSource fan-out rounds against Nchan and mailpush, with the table of record.
#
# Wraps the team's shared bench scripts (`nchan/run.sh`, `mailpush/run.sh`, `sseload`), which
# live outside this repository, and adds what they lack for a comparison that holds:
# - rounds that interleave the servers (Nchan's scenarios, then mailpush's, again), so both
#   see the same drift of this shared machine;
# - a knob for the length of the paced scenarios, so their tails have enough samples.
# Then `sse_compare.py` prints, per scenario, each server's median and range and the ratio
# of the medians with the spread of the per-round ratios.
#
# Usage (from the repository root, after `cargo build --release`):
#   SHARED_BENCH=../shared/bench benches/sse_compare.sh
# Knobs:
#   SHARED_BENCH  the shared bench folder (required)
#   MAILPUSH_BIN  default target/release/mailpush
#   ROUNDS        interleaved rounds (default 3)
#   SCENARIOS     default "fanout_max fanout_rate wide_max wide_rate"; mailpush only: idle19k,
#                 and conns_N (N streams over N/10 users at 2,000 ev/s, for how cost grows)
#   RATE_EVENTS   events in each paced (2,000 ev/s) scenario (default 60000: 30 s)
#   SERVERS       default "nchan mailpush"
#   OUT_DIR       where the JSON lines go (default a new temp dir, printed)
set -euo pipefail

: "${SHARED_BENCH:?set SHARED_BENCH to the shared bench folder (shared/bench)}"
SHARED_BENCH=$(cd "$SHARED_BENCH" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
MAILPUSH_BIN=${MAILPUSH_BIN:-target/release/mailpush}
[[ -x $MAILPUSH_BIN ]] || { echo "build mailpush first: $MAILPUSH_BIN is missing" >&2; exit 2; }
MAILPUSH_BIN=$(cd "$(dirname "$MAILPUSH_BIN")" && pwd)/$(basename "$MAILPUSH_BIN")
ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-"fanout_max fanout_rate wide_max wide_rate"}
RATE_EVENTS=${RATE_EVENTS:-60000}
SERVERS=${SERVERS:-"nchan mailpush"}
OUT_DIR=${OUT_DIR:-$(mktemp -d -t sse-compare.XXXXXX)}
mkdir -p "$OUT_DIR"

# The shared scripts, copied so that the paced scenarios take RATE_EVENTS; sseload is found
# through the copy's parent folder, as in the original layout.
WORK=$(mktemp -d -t sse-compare-scripts.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ln -s "$SHARED_BENCH/sseload" "$WORK/sseload"
for server in nchan mailpush; do
  mkdir -p "$WORK/$server"
  cp "$SHARED_BENCH/$server/summarize.py" "$WORK/$server/"
  sed "s/--events 10000 --rate 2000/--events $RATE_EVENTS --rate 2000/" \
    "$SHARED_BENCH/$server/run.sh" >"$WORK/$server/run.sh"
  grep -q -- "--events $RATE_EVENTS --rate 2000" "$WORK/$server/run.sh" ||
    { echo "$server/run.sh no longer has the paced scenarios this script rewrites" >&2; exit 2; }
done
# The cost-growth scenarios, mailpush only: `conns_N` is N streams over N/10 users at
# 2,000 events/s, so the delivery rate stays 20,000/s while the connections grow.
sed -i 's|^    \*) echo "unknown scenario|    conns_*) n=${sc#conns_}; for r in $(seq "$REPEAT"); do run_one "$sc#$r" --connections "$n" --users $((n / 10)) --events '"$RATE_EVENTS"' --rate 2000 --pub-conns 16; done ;;\n&|' \
  "$WORK/mailpush/run.sh"
grep -q '^    conns_' "$WORK/mailpush/run.sh" ||
  { echo "mailpush/run.sh no longer has the scenario switch this script extends" >&2; exit 2; }

NCHAN_SCENARIOS=""
for sc in $SCENARIOS; do [[ $sc == idle19k || $sc == conns_* ]] || NCHAN_SCENARIOS+=" $sc"; done

ulimit -n 20000 2>/dev/null || true
echo "results -> $OUT_DIR ($ROUNDS rounds of: $SERVERS; $SCENARIOS; $RATE_EVENTS paced events)" >&2
for round in $(seq "$ROUNDS"); do
  for server in $SERVERS; do
    case $server in
      nchan)
        [[ -n $NCHAN_SCENARIOS ]] || continue
        SCENARIOS="$NCHAN_SCENARIOS" REPEAT=1 OUT="$OUT_DIR/nchan.jsonl" \
          bash "$WORK/nchan/run.sh" >"$OUT_DIR/nchan-round$round.log" 2>&1 ;;
      mailpush)
        MAILPUSH_HTTP__MAX_CONNECTIONS=20000 MAILPUSH_BIN="$MAILPUSH_BIN" SCENARIOS="$SCENARIOS" \
          REPEAT=1 OUT="$OUT_DIR/mailpush.jsonl" \
          bash "$WORK/mailpush/run.sh" >"$OUT_DIR/mailpush-round$round.log" 2>&1 ;;
      *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    echo "round $round: $server done" >&2
  done
done
python3 "$HERE/sse_compare.py" "$OUT_DIR"
