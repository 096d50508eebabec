#!/usr/bin/env bash
# Installs what building and booting DebVisor needs on a Debian 12 host.
# Idempotent: packages already present are left alone. Needs root.
set -euo pipefail

packages=(
  # image builder
  mmdebstrap squashfs-tools fdisk mtools dosfstools e2fsprogs xz-utils
  grub-efi-amd64-bin grub-common uidmap
  # lab and system tests
  qemu-system-x86 qemu-utils ovmf util-linux
  # build of the workspace
  build-essential pkg-config
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-host: missing packages: ${missing[*]}; run this script as root (sudo $0)" >&2
    exit 1
  fi
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup-host: cargo not found: install Rust 1.95 (rustup)" >&2; exit 1; }
