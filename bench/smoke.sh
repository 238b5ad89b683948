#!/usr/bin/env bash
# The benchmark's smoke run (CI runs it after the tests): 20,000 names, 2 s dnsperf runs, one repetition,
# filterd and dnsmasq. It installs what it needs (dnsperf, dnsmasq-base; a venv with filterd[fast]) and fails
# when a server does not start, answers a spot check wrong, or a dnsperf run gives no result.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout -s INT -k 30 300 "${PYTHON:-python3}" bench/run.py --smoke "$@"
