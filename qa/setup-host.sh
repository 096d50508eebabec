#!/usr/bin/env bash
# Installs what building and booting DebVisor needs on a Debian 12 host.
# Idempotent: packages already present are left alone. Needs root.
set -euo pipefail

packages=(
  # image builder (e2fsprogs also makes the config media of the system tests)
  mmdebstrap squashfs-tools fdisk mtools dosfstools e2fsprogs xz-utils
  grub-efi-amd64-bin grub-common uidmap
  # the update bundle (rauc bundle / rauc info) and its development CA; the
  # real-RAUC tests run `rauc service` on a private bus and cross-check the
  # dm-verity root hash with veritysetup
  rauc openssl dbus-daemon cryptsetup-bin
  # lab and system tests
  qemu-system-x86 qemu-utils ovmf util-linux
  # PXE provisioning: iPXE binaries served over TFTP, real DHCP clients
  # (dhclient, busybox udhcpc), the tftp-hpa client, dnsmasq as the site's
  # DHCP server and as the peer of `bench dhcp`, perfdhcp (kea-admin), and
  # xorriso for the USB installer's hybrid ISO; curl reports installs
  # as the node would
  ipxe isc-dhcp-client busybox tftp-hpa dnsmasq-base kea-admin xorriso curl
  # build of the workspace (libvirt-dev: the agent's VMs link libvirt; its
  # test driver, in libvirt0, runs the VM tests on the host); virsh
  # (libvirt-clients) is the peer of `bench vm`
  build-essential pkg-config libvirt-dev libvirt-clients
  # a real libvirtd and its QEMU driver for the system tests that boot the
  # tiny guest (qa/src/libvirtd.rs; its ISO is made with xorriso, above)
  libvirt-daemon-system libvirt-daemon-driver-qemu
  # the Python gRPC client of the agent_sim_clients test
  python3-venv
  # the console's browser tests (headless Chromium driven over WebDriver)
  chromium chromium-driver
)
# npm vendors the console's front-end packages at build time (from its
# lockfile); any npm will do (Debian's, or one that came with Node).
command -v npm >/dev/null || packages+=(npm)

missing_packages() {
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
missing_packages
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-host: missing packages: ${missing[*]}; run this script as root (sudo $0)" >&2
    exit 1
  fi
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # apt may remove an installed package to satisfy the new ones (seen: a
  # backports qemu-utils removed by Debian 12's qemu-system-x86); install
  # whatever is missing now, in the versions that go with the rest.
  missing_packages
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing again what apt removed: ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    missing_packages
    if [ ${#missing[@]} -gt 0 ]; then
      echo "setup-host: still missing after apt-get install: ${missing[*]}" >&2
      exit 1
    fi
  fi
fi
command -v cargo >/dev/null || { echo "setup-host: cargo not found: install Rust 1.95 (rustup)" >&2; exit 1; }

# The third-party gRPC client (grpcio + reflection) of the agent_sim_clients
# system test, pinned by version and sha256 in qa/python/requirements.txt.
# pip uses the host's own configuration (index, certificates).
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/qa/python/requirements.txt"
venv="$root/target/debvisor-cache/pyvenv"
stamp="$venv/requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-host: creating the Python client venv in $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --require-hashes --only-binary :all: -r "$req"
  echo "$want" > "$stamp"
fi
