#!/usr/bin/env bash
# Install filterd as a system service on Raspberry Pi OS or Debian 12+ (arm64, armhf, amd64), upgrade it, or
# remove it. Run it as root from a checkout of filterd; deploy/README.md walks through the whole setup.
#
#   sudo deploy/install.sh                      install, or upgrade in place (run it again after `git pull`)
#   sudo deploy/install.sh --uninstall          remove it, keeping the config and the state
#   sudo deploy/install.sh --uninstall --purge  remove the config, the state and the filterd user too
#   deploy/install.sh --dry-run                 print every action, change nothing (no root needed)
#
# Options:
#   --lan-address A.B.C.D  this machine's LAN address (default: the source address of its default route,
#                          from `ip -4 route get`, which computes a route and sends nothing)
#   --router A.B.C.D       the router, filterd's upstream (default: the default route's gateway)
#   --source DIR           install from this checkout (default: the one this script is in)
#   --version X            install filterd X from the package index instead of a checkout
#   --python PATH          the Python (3.11+) the venv is made from (default: python3)
#   --arch ARCH            the Debian architecture (default: `dpkg --print-architecture`); uvloop (the
#                          [fast] extra) only on amd64 and arm64: it has no wheels for 32-bit ARM
#   --no-start             install and enable the service, but do not (re)start it
#   --root DIR             install under DIR instead of /, for tests: the venv, config, unit and link are
#                          laid out there for real; useradd, chown, apt-get and systemctl are printed and
#                          skipped. The venv's scripts then point into DIR.
#
# What it does, each step printed as `+ command` before it runs (`- skipped (...)` when it does not):
#   1. a `filterd` system user and group (no login, home /var/lib/filterd)
#   2. python3-venv from apt if the venv module is missing; a venv in /opt/filterd/venv with filterd in it
#   3. /etc/filterd/filterd.yaml (root:filterd, 0640) from config/production.yaml, with the example addresses
#      192.168.1.2 (this machine) and 192.168.1.1 (the router) replaced by the real ones. An existing file is
#      never overwritten: if it differs, the new version is written beside it as filterd.yaml.new
#   4. /var/lib/filterd (filterd:filterd, 0750); /usr/local/bin/filterd -> the venv's filterd
#   5. /etc/systemd/system/filterd.service from deploy/systemd/; `filterd config check`; then
#      `systemctl daemon-reload`, `enable`, `restart` (an upgrade restarts onto the new version)
set -euo pipefail
umask 022 # the venv must be readable by the filterd user, whatever root's umask is

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(dirname "$here")"
version=""
dry_run=0
root=""
uninstall=0
purge=0
start=1
lan_address=""
router=""
python="python3"
arch=""

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }

while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --root) root="${2:?--root needs a directory}"; shift ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    --source) source_dir="${2:?--source needs a directory}"; shift ;;
    --version) version="${2:?--version needs a version}"; shift ;;
    --lan-address) lan_address="${2:?--lan-address needs an address}"; shift ;;
    --router) router="${2:?--router needs an address}"; shift ;;
    --python) python="${2:?--python needs a path}"; shift ;;
    --arch) arch="${2:?--arch needs an architecture}"; shift ;;
    --no-start) start=0 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
((purge == 0 || uninstall == 1)) || die "--purge goes with --uninstall"
if [[ -n "$root" ]]; then
  [[ "$root" == /* ]] || root="$(pwd)/$root"
  root="${root%/}"
  [[ -n "$root" ]] || die "--root / is the real system: leave --root out"
fi
if ((dry_run == 0)) && [[ -z "$root" ]] && [[ "$(id -u)" != 0 ]]; then
  die "run it as root (sudo $0 ...), or with --dry-run to see what it would do"
fi

# The installed layout. Absolute paths as they are on the installed system; $root is put in front for files.
OPT=/opt/filterd
VENV=$OPT/venv
ETC=/etc/filterd
CONFIG=$ETC/filterd.yaml
STATE=/var/lib/filterd
UNIT=/etc/systemd/system/filterd.service
DROPINS=/etc/systemd/system/filterd.service.d
LINK=/usr/local/bin/filterd
USER_NAME=filterd
#: The addresses config/production.yaml is written with (its header says so).
EXAMPLE_LAN=192.168.1.2
EXAMPLE_ROUTER=192.168.1.1

# --- actions: printed, then run unless --dry-run ------------------------------------------------------------

run() {
  echo "+ $(printf '%q ' "$@" | sed 's/ $//')"
  ((dry_run)) || "$@"
}

# A change to the real system (users, ownership, packages, services): skipped under --root.
system() {
  if [[ -n "$root" ]]; then
    echo "- skipped (--root): $(printf '%q ' "$@" | sed 's/ $//')"
  else
    run "$@"
  fi
}

# write_file DEST MODE DESCRIPTION < content: replace DEST atomically (a temporary file beside it, renamed).
write_file() {
  local dest="$1" mode="$2" what="$3" content
  content="$(cat)"
  echo "+ write $dest (mode $mode): $what"
  ((dry_run)) && return 0
  printf '%s\n' "$content" >"$dest.tmp.$$"
  chmod "$mode" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
}

note() { echo "  $*"; }

valid_ipv4() {
  local IFS=. a b c d extra
  [[ "$1" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
  read -r a b c d extra <<<"$1"
  ((a <= 255 && b <= 255 && c <= 255 && d <= 255))
}

# --- what this machine is -------------------------------------------------------------------------------------

detect_arch() {
  [[ -n "$arch" ]] && return 0
  if command -v dpkg >/dev/null; then
    arch="$(dpkg --print-architecture)"
  else
    arch="$(uname -m)"
  fi
}

# The default route's source address and gateway. `ip route get` asks the kernel's routing table; no packet
# is sent. 192.0.2.1 (TEST-NET-1) is only a destination to look the route up for.
detect_addresses() {
  local route="" word previous=""
  if [[ -z "$lan_address" || -z "$router" ]]; then
    route="$(ip -4 route get 192.0.2.1 2>/dev/null | head -n 1 || true)"
    for word in $route; do
      case "$previous" in
        src) [[ -n "$lan_address" ]] || lan_address="$word" ;;
        via) [[ -n "$router" ]] || router="$word" ;;
      esac
      previous="$word"
    done
  fi
  [[ -n "$lan_address" ]] || die "cannot tell this machine's LAN address (no default route?): give --lan-address A.B.C.D"
  [[ -n "$router" ]] || die "cannot tell the router's address (no default gateway?): give --router A.B.C.D"
  valid_ipv4 "$lan_address" || die "--lan-address $lan_address is not an IPv4 address"
  valid_ipv4 "$router" || die "--router $router is not an IPv4 address"
  [[ "$lan_address" != 127.* ]] || die "$lan_address is loopback, not a LAN address: give --lan-address"
}

# config/production.yaml with this machine's addresses in place of the examples, outside comment lines.
# Only whole addresses are replaced (192.168.1.10 contains 192.168.1.1), through placeholders so one
# replacement never feeds the other; each runs twice because a match uses up the character after it.
render_config() {
  local lan="s/(^|[^0-9.])${EXAMPLE_LAN//./\\.}([^0-9]|$)/\1@LAN@\2/g"
  local router_address="s/(^|[^0-9.])${EXAMPLE_ROUTER//./\\.}([^0-9]|$)/\1@ROUTER@\2/g"
  echo "# deploy/install.sh filled in: this machine's LAN address $lan_address, the router $router."
  sed -E -e "/^[[:space:]]*#/!{$lan;$lan;$router_address;$router_address}" \
    -e "s/@LAN@/${lan_address}/g; s/@ROUTER@/${router}/g" "$source_dir/config/production.yaml"
}

# --- install --------------------------------------------------------------------------------------------------

ensure_user() {
  if getent passwd "$USER_NAME" >/dev/null 2>&1; then
    echo "  user $USER_NAME exists"
  else
    system useradd --system --user-group --no-create-home --home-dir "$STATE" --shell /usr/sbin/nologin \
      --comment "filterd DNS filter" "$USER_NAME"
  fi
}

ensure_python() {
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "$python is missing or older than 3.11 (filterd needs 3.11: Debian 12 / Raspberry Pi OS bookworm has it)"
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    system apt-get update
    system apt-get install -y python3-venv
  fi
}

install_venv() {
  local spec pip_args=(install --upgrade --no-input --disable-pip-version-check --quiet)
  local extra="[fast]"
  case "$arch" in
    amd64 | arm64) ;;
    *) extra="" ; note "no uvloop on $arch (it has no wheels there): filterd runs on plain asyncio" ;;
  esac
  if [[ -n "$version" ]]; then
    spec="filterd${extra}==${version}"
  else
    [[ -f "$source_dir/pyproject.toml" ]] || die "$source_dir is not a filterd checkout (no pyproject.toml): give --source DIR"
    spec="${source_dir}${extra}"
  fi
  if [[ -x "$root$VENV/bin/python" ]] && ! "$root$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    note "the venv's Python no longer runs (the system Python was upgraded?): making it again"
    run rm -rf "$root$VENV"
  fi
  if [[ ! -x "$root$VENV/bin/python" ]]; then
    run mkdir -p "$root$OPT"
    run "$python" -m venv "$root$VENV"
  else
    echo "  venv $root$VENV exists: upgrading filterd in it"
  fi
  run "$root$VENV/bin/python" -m pip "${pip_args[@]}" "$spec"
}

install_config() {
  local rendered
  rendered="$(render_config)"
  run mkdir -p "$root$ETC"
  system chown "root:$USER_NAME" "$root$ETC"
  run chmod 0750 "$root$ETC"
  if [[ ! -e "$root$CONFIG" ]]; then
    write_file "$root$CONFIG" 0640 "config/production.yaml for $lan_address (router $router)" <<<"$rendered"
    system chown "root:$USER_NAME" "$root$CONFIG"
  elif [[ "$(cat "$root$CONFIG")" == "$rendered" ]]; then
    echo "  $root$CONFIG is up to date"
  else
    echo "  $root$CONFIG differs from the shipped config: kept as it is (yours)"
    write_file "$root$CONFIG.new" 0640 "the shipped config, to compare: diff $CONFIG $CONFIG.new" <<<"$rendered"
    system chown "root:$USER_NAME" "$root$CONFIG.new"
  fi
}

install_files() {
  run mkdir -p "$root$STATE"
  system chown "$USER_NAME:$USER_NAME" "$root$STATE"
  run chmod 0750 "$root$STATE"
  run mkdir -p "$root$(dirname "$LINK")" "$root$(dirname "$UNIT")"
  run ln -sfn "$VENV/bin/filterd" "$root$LINK"
  if cmp -s "$source_dir/deploy/systemd/filterd.service" "$root$UNIT"; then
    echo "  $root$UNIT is up to date"
  else
    run install -m 0644 "$source_dir/deploy/systemd/filterd.service" "$root$UNIT"
  fi
}

check_config() {
  if ((dry_run)); then
    run "$root$VENV/bin/filterd" config check "$root$CONFIG"
  elif ! run "$root$VENV/bin/filterd" config check "$root$CONFIG"; then
    die "$CONFIG has errors with this version of filterd (above): fix them, then run: systemctl restart filterd"
  fi
}

warn_if_port_53_is_taken() {
  [[ -z "$root" ]] && command -v ss >/dev/null || return 0
  ! systemctl is-active --quiet filterd 2>/dev/null || return 0 # an upgrade: the holder is filterd itself
  local holders line
  holders="$(ss -H -lunp 'sport = :53' 2>/dev/null | grep -v '"filterd"' || true)"
  if [[ -n "$holders" ]]; then
    echo "  port 53 is taken (filterd cannot start until it is free; deploy/README.md, \"Port 53 is taken\"):"
    while IFS= read -r line; do echo "    $line"; done <<<"$holders"
  fi
}

start_service() {
  system systemctl daemon-reload
  system systemctl enable filterd
  if ((start == 0)); then
    echo "  --no-start: start it with: systemctl start filterd"
    return 0
  fi
  warn_if_port_53_is_taken
  # Type=notify: restart returns once DNS answers, or fails.
  if [[ -z "$root" ]] && ((dry_run == 0)); then
    if ! run systemctl restart filterd; then
      journalctl -u filterd -n 20 --no-pager >&2 || true
      die "filterd did not start (its log is above; deploy/README.md, \"Port 53 is taken\", if that is why)"
    fi
  else
    system systemctl restart filterd
  fi
}

do_install() {
  detect_arch
  detect_addresses
  local from="$source_dir"
  [[ -z "$version" ]] || from="version $version from the package index"
  echo "filterd: installing from $from on $arch: LAN address $lan_address, router $router${root:+, under $root}"
  if [[ -z "$root" ]] && command -v ip >/dev/null &&
    ip -4 -o addr show to "$lan_address" 2>/dev/null | grep -q dynamic; then
    note "$lan_address came from DHCP: reserve it for this machine in the router (deploy/README.md, step 1),"
    note "or it may change one day and the network loses its DNS server"
  fi
  ensure_user
  ensure_python
  install_venv
  install_config
  install_files
  check_config
  start_service
  if ((dry_run)); then
    echo "dry run: done, nothing was changed"
    return 0
  fi
  echo "filterd: done. Check it from another device: dig @$lan_address omegle.com (the answer is $lan_address);"
  echo "then point the router's DHCP DNS server at $lan_address (deploy/README.md). Log: journalctl -u filterd"
}

# --- uninstall ------------------------------------------------------------------------------------------------

do_uninstall() {
  echo "filterd: removing${root:+ from under $root}"
  if [[ -e "$root$UNIT" ]]; then
    system systemctl disable --now filterd
    run rm -f "$root$UNIT"
    system systemctl daemon-reload
  fi
  [[ -e "$root$OPT" ]] && run rm -rf "$root$OPT"
  if [[ -L "$root$LINK" && "$(readlink "$root$LINK")" == "$VENV/bin/filterd" ]]; then
    run rm -f "$root$LINK"
  fi
  if ((purge)); then
    [[ -e "$root$DROPINS" ]] && run rm -rf "$root$DROPINS"
    [[ -e "$root$ETC" ]] && run rm -rf "$root$ETC"
    [[ -e "$root$STATE" ]] && run rm -rf "$root$STATE"
    if getent passwd "$USER_NAME" >/dev/null 2>&1; then
      system userdel "$USER_NAME"
    fi
  else
    echo "  kept $ETC (the config) and $STATE (downloaded lists, local entries, admin token); --purge removes them"
  fi
  if ((purge == 0)) && [[ -e "$root$DROPINS" ]]; then
    echo "  kept $DROPINS (your systemctl edit drop-ins)"
  fi
  if ((dry_run)); then
    echo "dry run: done, nothing was changed"
    return 0
  fi
  echo "filterd: removed. Point the router's DHCP DNS server back at the router before this machine goes away."
}

if ((dry_run)); then
  echo "dry run: printing every action, changing nothing"
fi
if ((uninstall)); then
  do_uninstall
else
  do_install
fi
