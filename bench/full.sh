#!/usr/bin/env bash
# The full benchmark, in the background: about 20 minutes on 2 cores. Progress goes to
# bench/results/full.log, the table to bench/results/latest-full.md (and full-STAMP.md/.json).
# Arguments go to run.py, e.g. `bench/full.sh --reps 5 --seconds 20`. Bounded: SIGINT after 90 minutes,
# which makes run.py stop every server it started; SIGKILL a minute later if it has not.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
nohup timeout -s INT -k 60 5400 "${PYTHON:-python3}" bench/run.py "$@" >bench/results/full.log 2>&1 </dev/null &
echo "bench: full run started (pid $!); progress: tail -f bench/results/full.log; table: bench/results/latest-full.md"
