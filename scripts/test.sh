#!/usr/bin/env bash
# Install everything the tests need, then lint, type-check and test. The README's test command; CI runs it too.
#   Debian packages: dnsmasq-base (the real upstream in integration tests), bind9-dnsutils (dig),
#   chromium and iproute2 (the block page in a real browser, in a network namespace: needs root),
#   libnss3-tools (certutil: the local CA in Chromium's NSS database, for the block page over HTTPS),
#   chromium-driver (Selenium drives Chromium through the admin page),
#   dnsdist (a real DoT and DoH upstream on loopback), knot-dnsutils (kdig: filterd's own DoT and DoH),
#   nftables (deploy/'s router firewall, in network namespaces), systemd (systemd-analyze verify of the
#   service; nothing is started) and shellcheck (deploy/install.sh).
#   dnsdist (deploy/dnsdist/: run in front of two filterd on loopback) and prometheus (its promtool: the alert
#   rules' unit tests in deploy/prometheus/; nothing is started).
#   Python: a venv in .venv with filterd (editable) and its [test] extra.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(dnsmasq-base bind9-dnsutils chromium chromium-driver iproute2 libnss3-tools nftables systemd shellcheck dnsdist prometheus knot-dnsutils)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
