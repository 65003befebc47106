#!/usr/bin/env bash
# Builds the Linux KV test guest: out/linux-kv-initrd.cpio.gz (+ .sha256) and
# out/linux-kv-vmlinuz, the pinned Debian kernel it runs on (image/kernel.lock).
#
# The initramfs holds only: /init (ftguest-linux-kv, static), /dev/console, the
# mount points, and the virtio modules of the pinned kernel with their
# dependency closure and a filtered modules.dep (image's `modclosure`). It is
# written by image's `mkinitramfs` (cpio newc, fixed mtimes/inodes/owners,
# gzip with a fixed header), so its bytes depend only on the git tree, the
# kernel .deb, the Rust toolchain and SOURCE_DATE_EPOCH. gzip because the
# kernel unpacks it anyway (CONFIG_RD_GZIP=y) and it is a third of the size to
# load into guest memory. The script builds the archive twice and stops if the
# two differ; REPRO=full also builds the binary a second time in another target
# directory and compares it.
#
# Environment (defaults as image/build.sh):
#   SOURCE_DATE_EPOCH  time stamp of every entry (default: last commit time, else 1700000000)
#   FT_CACHE_DIR       where the kernel .deb is kept (default: build/cache)
#   FT_TARGET_DIR      cargo target dir (default: build/target)
#   FT_OUT_DIR         output directory (default: out)
#   REPRO=full         also check that the binary builds bit-identically
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
export LC_ALL=C TZ=UTC
umask 022

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH="$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 1700000000)"
fi
export SOURCE_DATE_EPOCH
BUILD="$REPO/build"
CACHE="${FT_CACHE_DIR:-$BUILD/cache}"
TARGET_DIR="${FT_TARGET_DIR:-$BUILD/target}"
OUT="${FT_OUT_DIR:-$REPO/out}"
TRIPLE=x86_64-unknown-linux-gnu
# Keep in step with WANTED in guest/linux-kv/src/modules.rs (a test there reads this line).
WANTED_MODULES=(virtio_mmio virtio_pci virtio_blk virtio_net)

say() { printf 'linux-kv: %s\n' "$*"; }
die() { printf 'linux-kv: ERROR: %s\n' "$*" >&2; exit 1; }

# --- kernel (as image/build.sh: pinned, checksummed) -------------------------------
# shellcheck source=../../image/kernel.lock
source image/kernel.lock
mkdir -p "$CACHE"
DEB="$CACHE/${KERNEL_PACKAGE}_${KERNEL_VERSION//:/%3a}_amd64.deb"
if [[ ! -f "$DEB" ]]; then
  say "fetching $KERNEL_PACKAGE=$KERNEL_VERSION with apt-get download"
  (cd "$CACHE" && apt-get download -q "$KERNEL_PACKAGE=$KERNEL_VERSION") >&2 || [[ -f "$DEB" ]] ||
    die "cannot download $KERNEL_PACKAGE=$KERNEL_VERSION (apt-get update? or copy the .deb, sha256 $KERNEL_DEB_SHA256, into $CACHE/)"
fi
got="$(sha256sum "$DEB" | cut -d' ' -f1)"
[[ "$got" == "$KERNEL_DEB_SHA256" ]] ||
  die "kernel package $DEB has sha256 $got, image/kernel.lock pins $KERNEL_DEB_SHA256; refusing to build"
KDIR="$BUILD/linux-kv/kernel/$KERNEL_RELEASE"
if [[ "$(cat "$KDIR/.sha256" 2>/dev/null || true)" != "$got" ]]; then
  rm -rf "$KDIR" && mkdir -p "$KDIR"
  dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$KDIR" --wildcards './boot/vmlinuz-*' './boot/config-*' './lib/modules/*'
  echo "$got" > "$KDIR/.sha256"
fi
VMLINUZ="$KDIR/boot/vmlinuz-$KERNEL_RELEASE"
MODDIR="$KDIR/lib/modules/$KERNEL_RELEASE"
[[ -f "$VMLINUZ" && -d "$MODDIR" ]] || die "$DEB holds no vmlinuz/modules for $KERNEL_RELEASE"
say "kernel $KERNEL_PACKAGE $KERNEL_VERSION (sha256 verified)"

# --- binaries --------------------------------------------------------------------
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
build_bins() { # $1 = target dir
  RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO=/build --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$1=/target" \
    cargo build -q --locked --release --target "$TRIPLE" --target-dir "$1" \
    -p ftguest-linux-kv -p image --bin ftguest-linux-kv --bin modclosure --bin mkinitramfs
}
say "building ftguest-linux-kv (static) and the image tools (target dir $TARGET_DIR)"
build_bins "$TARGET_DIR"
BIN="$TARGET_DIR/$TRIPLE/release"
INIT="$BIN/ftguest-linux-kv"
if ! file_out="$(LC_ALL=C readelf -d "$INIT" 2>&1)" || grep -q NEEDED <<<"$file_out"; then
  die "$INIT is not a static executable"
fi
if [[ "${REPRO:-}" == full ]]; then
  say "REPRO=full: building the binary again in $BUILD/linux-kv/target2"
  build_bins "$BUILD/linux-kv/target2"
  cmp -s "$INIT" "$BUILD/linux-kv/target2/$TRIPLE/release/ftguest-linux-kv" ||
    die "ftguest-linux-kv differs between two builds"
  say "binary identical in both builds ($(sha256sum "$INIT" | cut -c1-16)...)"
fi

# --- initramfs -------------------------------------------------------------------
STAGE="$BUILD/linux-kv/stage"
rm -rf "$STAGE" && mkdir -p "$STAGE"
"$BIN/modclosure" --moddir "$MODDIR" --out "$STAGE/modules" "${WANTED_MODULES[@]}" > "$STAGE/modules.txt"
if grep -q '^absent' "$STAGE/modules.txt"; then
  die "modules missing from the kernel package: $(awk '/^absent/ {printf "%s ", $2}' "$STAGE/modules.txt")"
fi
say "modules: $(awk '/^module/ {printf "%s ", $2}' "$STAGE/modules.txt")"
{
  echo "# generated by guest/linux-kv/build-initramfs.sh"
  echo "dir /dev 0755"
  echo "nod /dev/console 0600 c 5 1"
  echo "dir /proc 0555"
  echo "dir /sys 0555"
  echo "file /init $INIT 0755"
  echo "tree /lib/modules/$KERNEL_RELEASE $STAGE/modules"
} > "$STAGE/initramfs.manifest"

mkdir -p "$OUT"
INITRD="$OUT/linux-kv-initrd.cpio.gz"
"$BIN/mkinitramfs" --manifest "$STAGE/initramfs.manifest" --mtime "$SOURCE_DATE_EPOCH" \
  --compress gzip --out "$INITRD.tmp" 2>/dev/null
"$BIN/mkinitramfs" --manifest "$STAGE/initramfs.manifest" --mtime "$SOURCE_DATE_EPOCH" \
  --compress gzip --out "$STAGE/again.cpio.gz" 2>/dev/null
cmp -s "$INITRD.tmp" "$STAGE/again.cpio.gz" || die "two builds of the initramfs differ"
mv "$INITRD.tmp" "$INITRD"
cp "$VMLINUZ" "$OUT/linux-kv-vmlinuz"
(cd "$OUT" && sha256sum linux-kv-initrd.cpio.gz linux-kv-vmlinuz > linux-kv.sha256)

say "init:      $(stat -c %s "$INIT") bytes, static"
say "initramfs: $INITRD, $(stat -c %s "$INITRD") bytes (gzip), sha256 $(sha256sum "$INITRD" | cut -d' ' -f1)"
say "kernel:    $OUT/linux-kv-vmlinuz ($KERNEL_PACKAGE $KERNEL_VERSION)"
say "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH; two archive builds identical"
say "command line e.g.: console=ttyS0 panic=-1 mode=kv ip=198.51.100.10/24 mac=52:54:00:12:34:56 port=7000"
