#!/usr/bin/env bash
# Installs what `make` needs and is missing: Debian packages and rustup
# targets. Idempotent; prints nothing when everything is already there.
set -euo pipefail

PACKAGES=(
  qemu-system-x86 ovmf                 # boot tests, benchmarks, the demo
  xorriso isolinux syslinux-common     # the ISO and its BIOS loader
  grub-efi-amd64-bin grub-common       # the UEFI loader (grub-mkimage)
  mtools dosfstools                    # the EFI system partition image
  cpio                                 # inspecting initramfs images by hand
  iproute2                             # network namespaces for the test clients
  qemu-utils                           # qemu-nbd, qemu-io: per-host storage paths in the QEMU tests
  tgt                                  # tgtd/tgtadm: the iSCSI target serving shared storage with persistent reservations
  qemu-block-extra                     # QEMU's iSCSI block driver (block-iscsi.so, libiscsi)
)
RUST_TARGETS=(x86_64-unknown-none x86_64-unknown-linux-gnu)

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "prereqs: installing ${missing[*]}"
  sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v rustup >/dev/null; then
  echo "prereqs: rustup not found; install Rust via https://rustup.rs" >&2
  exit 1
fi
installed="$(rustup target list --installed)"
for t in "${RUST_TARGETS[@]}"; do
  if ! grep -qx "$t" <<<"$installed"; then
    echo "prereqs: rustup target add $t"
    rustup target add "$t" >/dev/null
  fi
done
