# Shared by scripts/test and scripts/demo: check the machine and install what tandem's tests and demo
# need on Debian 12. Idempotent: installs only what is missing. With CI=true anything missing that
# cannot be installed is a failure.

die() { echo "error: $*" >&2; exit 1; }

# libstrongswan-standard-plugins (openssl, gcm...) is only a Recommends of strongswan-charon, which
# --no-install-recommends leaves out; the charon test peers load those plugins.
# keepalived: the HA tests run it per namespace (keepalived --namespace); no system keepalived may run.
# spin: scripts/model-check's model checker (its verifier is compiled with gcc, as for the Rust build).
APT_PACKAGES=(strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libcharon-extra-plugins
              libstrongswan-extra-plugins iperf3 iproute2 iputils-ping python3 procps tshark nftables
              keepalived spin)

install_prerequisites() {
  [ "$(id -u)" = 0 ] || die "run as root (network namespaces and strongSwan need it)"
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # Keep package scripts from starting system daemons (a system charon would hold UDP 500, a
    # system keepalived would run VRRP on the host).
    local prc=/usr/sbin/policy-rc.d had_prc=0
    [ -e "$prc" ] && had_prc=1
    [ $had_prc = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$prc"; chmod +x "$prc"; }
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ $had_prc = 1 ] || rm -f "$prc"
  fi
  [ -x /usr/lib/ipsec/charon ] || die "strongSwan charon missing after install"
  command -v swanctl >/dev/null || die "swanctl missing after install"
  command -v tshark >/dev/null || die "tshark missing after install"
  command -v nft >/dev/null || die "nft (nftables) missing after install"
  [ -e /usr/lib/ipsec/plugins/libstrongswan-gcm.so ] || die "strongSwan's gcm plugin missing after install"
  command -v keepalived >/dev/null || die "keepalived missing after install"
  # The HA tests' keepalived write their pid files in their own directories; this one is the
  # system service's. Not stopped here: it is not ours.
  if [ -s /run/keepalived.pid ] && kill -0 "$(cat /run/keepalived.pid)" 2>/dev/null; then
    die "a system keepalived runs (pid $(cat /run/keepalived.pid)); stop it (systemctl stop keepalived) before the tests"
  fi
}

# Only for scripts/bench (the dataplane benchmark): WireGuard tools and boringtun as baselines.
# wireguard-tools without its recommends (those pull in a kernel image). boringtun-cli goes under target/, not into ~/.cargo.
BENCH_APT_PACKAGES=(wireguard-tools)
BORINGTUN_VERSION=0.7.1

install_bench_prerequisites() {
  local root=$1 missing=()
  for p in "${BENCH_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
      || die "cannot install ${missing[*]}"
  fi
  if ! "$root/bin/boringtun-cli" --version 2>/dev/null | grep -q "$BORINGTUN_VERSION"; then
    echo "installing boringtun-cli $BORINGTUN_VERSION under $root" >&2
    cargo install boringtun-cli --version "$BORINGTUN_VERSION" --locked --root "$root" --quiet
  fi
}
