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
  socat                                # one TCP connection per guest connection to a host's iSCSI storage path (qemu-tests iscsi_login)
  qemu-block-extra                     # QEMU's iSCSI block driver (block-iscsi.so, libiscsi)
  libc6-dev binutils                   # static glibc (libc.a) and readelf: guest/linux-kv/build-initramfs.sh
  busybox-static                       # the shell of the L1 host and the Linux guest in qemu-tests linux_vm
  curl ca-certificates                 # fetching the pinned QEMU of linux_vm's L1 hosts (qemu-tests/nested-qemu.sh)
  chromium fonts-dejavu-core           # headless screenshots of the status page (qemu-tests status_page)
)
RUST_TARGETS=(x86_64-unknown-none x86_64-unknown-linux-gnu)

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
      echo "$p"
    fi
  done
}

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then sudo=(sudo); fi
updated=
# Two rounds: installing one package can remove another of the list. A
# machine that has qemu-utils from bookworm-backports (10.x) loses it when
# qemu-block-extra 7.2 comes from bookworm; the second round installs the
# matching qemu-utils (without it every NBD storage test fails: no qemu-nbd).
for round in 1 2; do
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || break
  echo "prereqs: installing ${missing[*]}"
  if [[ -z "$updated" ]]; then
    "${sudo[@]}" apt-get update -qq
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
  echo "prereqs: still missing after installing: ${missing[*]}" >&2
  exit 1
fi
for cmd in qemu-system-x86_64 qemu-nbd qemu-io qemu-img xorriso; do
  if ! command -v "$cmd" >/dev/null; then
    echo "prereqs: $cmd not found in PATH after installing the packages" >&2
    exit 1
  fi
done

# `make test` from a fresh clone writes about 7 GB (test builds 2.4 GB, the
# image's release build and the reproducibility rebuild ~1.5 GB each, QEMU
# test disks); say so up front rather than fail deep inside a build.
free_kib="$(df -Pk . | awk 'NR == 2 { print $4 }')"
if [[ -n "$free_kib" ]] && ((free_kib < 10 * 1024 * 1024)); then
  echo "prereqs: WARNING: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); make test needs about 7 GiB" >&2
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
