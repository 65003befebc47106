#!/usr/bin/env bash
# Builds the appliance ISO: out/ftappliance.iso and out/ftappliance.iso.sha256.
#
# The bytes depend only on: the git tree (sources, Cargo.lock, image/kernel.lock),
# the Rust toolchain, the tool versions in image/tools.lock, SOURCE_DATE_EPOCH,
# the trust-root public key and the kernel command line. See image/README.md.
#
# Environment:
#   SOURCE_DATE_EPOCH   time stamp of every file (default: last commit time, else 1700000000)
#   FT_TRUST_ROOT_PUB   raw 32-byte Ed25519 config-signing public key
#                       (default: examples/dev-keys/signing.pub, the development key)
#   FT_KERNEL_CMDLINE   kernel command line (default below)
#   FT_CACHE_DIR        where the kernel .deb is kept (default: build/cache)
#   FT_TARGET_DIR       cargo target dir for the image's binaries (default: build/target)
#   FT_OUT_DIR          output directory (default: out)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export LC_ALL=C TZ=UTC
umask 022

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH="$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 1700000000)"
fi
export SOURCE_DATE_EPOCH
KERNEL_CMDLINE="${FT_KERNEL_CMDLINE:-console=ttyS0,115200 panic=10 loglevel=4 no_timer_check}"
TRUST_ROOT_PUB="${FT_TRUST_ROOT_PUB:-examples/dev-keys/signing.pub}"
BUILD="$REPO/build"
CACHE="${FT_CACHE_DIR:-$BUILD/cache}"
TARGET_DIR="${FT_TARGET_DIR:-$BUILD/target}"
OUT="${FT_OUT_DIR:-$REPO/out}"
TRIPLE=x86_64-unknown-linux-gnu
WANTED_MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod virtio_net virtio_console kvm_amd kvm_intel tun bridge i6300esb softdog button evdev)
ISO_LABEL=FTAPPLIANCE
START=$SECONDS

say() { printf 'image: %s\n' "$*"; }
die() { printf 'image: ERROR: %s\n' "$*" >&2; exit 1; }

# --- inputs ------------------------------------------------------------------
[[ -f "$TRUST_ROOT_PUB" ]] || die "trust root public key $TRUST_ROOT_PUB not found (set FT_TRUST_ROOT_PUB; \`ftctl keygen --out DIR\` makes one)"
key_size="$(stat -c %s "$TRUST_ROOT_PUB")"
[[ "$key_size" == 32 ]] || die "trust root $TRUST_ROOT_PUB must be a raw 32-byte Ed25519 public key, it has $key_size bytes"

while read -r pkg ver; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  have="$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo none)"
  if [[ "$have" != "$ver" ]]; then
    say "WARNING: $pkg is $have, image/tools.lock pins $ver: the ISO will work but its sha256 will differ"
  fi
done < image/tools.lock

# --- kernel --------------------------------------------------------------------
# shellcheck source=kernel.lock
source image/kernel.lock
mkdir -p "$CACHE"
DEB="$CACHE/${KERNEL_PACKAGE}_${KERNEL_VERSION//:/%3a}_amd64.deb"
if [[ ! -f "$DEB" ]]; then
  say "fetching $KERNEL_PACKAGE=$KERNEL_VERSION with apt-get download"
  if ! (cd "$CACHE" && apt-get download -q "$KERNEL_PACKAGE=$KERNEL_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || [[ ! -f "$DEB" ]]; then
    die "cannot download $KERNEL_PACKAGE=$KERNEL_VERSION. Run 'apt-get update' and retry. If Debian dropped
       this version from the mirror, copy the .deb (sha256 $KERNEL_DEB_SHA256) into $CACHE/ from another
       build machine or an archive, or bump image/kernel.lock to a current version (image/README.md)."
  fi
fi
got="$(sha256sum "$DEB" | cut -d' ' -f1)"
if [[ "$got" != "$KERNEL_DEB_SHA256" ]]; then
  die "kernel package checksum mismatch for $DEB
       expected sha256 $KERNEL_DEB_SHA256 (image/kernel.lock)
       got      sha256 $got
       Refusing to build. Delete the file to fetch it again, or bump image/kernel.lock deliberately."
fi
say "kernel $KERNEL_PACKAGE $KERNEL_VERSION (sha256 verified)"

KDIR="$BUILD/kernel/$KERNEL_RELEASE"
if [[ "$(cat "$KDIR/.sha256" 2>/dev/null || true)" != "$got" ]]; then
  rm -rf "$KDIR" && mkdir -p "$KDIR"
  dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$KDIR" --wildcards './boot/vmlinuz-*' './lib/modules/*'
  echo "$got" > "$KDIR/.sha256"
fi
VMLINUZ="$KDIR/boot/vmlinuz-$KERNEL_RELEASE"
MODDIR="$KDIR/lib/modules/$KERNEL_RELEASE"
[[ -f "$VMLINUZ" && -d "$MODDIR" ]] || die "$DEB does not hold vmlinuz/modules for $KERNEL_RELEASE (KERNEL_RELEASE in image/kernel.lock?)"

# --- binaries -------------------------------------------------------------------
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO=/build --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$TARGET_DIR=/target"
say "building static binaries (cargo, target dir $TARGET_DIR)"
RUSTFLAGS="$RUSTFLAGS" cargo build -q --release --target "$TRIPLE" --target-dir "$TARGET_DIR" \
  -p init -p ftvmm -p heartbeat -p fencing -p image
BIN="$TARGET_DIR/$TRIPLE/release"

GUEST_ELF=""
if [[ -f guest/Cargo.toml ]] && grep -q '^\[package\]' guest/Cargo.toml; then
  say "building the reference guest (guest/, x86_64-unknown-none)"
  # Run inside guest/ so its .cargo/config.toml (target rustflags) applies; RUSTFLAGS would
  # replace those flags, a --config array is appended to them instead.
  (cd guest && env -u RUSTFLAGS cargo build -q --release --target x86_64-unknown-none \
    --target-dir "$TARGET_DIR/guest" \
    --config "target.x86_64-unknown-none.rustflags=[\"--remap-path-prefix=$REPO=/build\", \"--remap-path-prefix=$CARGO_HOME_DIR=/cargo\", \"--remap-path-prefix=$TARGET_DIR=/target\"]")
  GUEST_ELF="$TARGET_DIR/guest/x86_64-unknown-none/release/ftguest"
  [[ -f "$GUEST_ELF" ]] || die "guest built but $GUEST_ELF is missing"
else
  say "NOTE: guest/Cargo.toml has no [package] yet: /lib/ftvmm/guests/kv-guest.elf left out"
fi

# --- initramfs ------------------------------------------------------------------
STAGE="$BUILD/stage"
rm -rf "$STAGE" && mkdir -p "$STAGE"
"$BIN/modclosure" --moddir "$MODDIR" --out "$STAGE/modules" "${WANTED_MODULES[@]}" > "$STAGE/modules.txt"
absent="$(awk '/^absent/ {printf "%s ", $2}' "$STAGE/modules.txt")"
say "modules: $(grep -c '^module' "$STAGE/modules.txt") files, absent: ${absent:-none}"
{
  echo "# generated by image/build.sh"
  echo "dir /bin 0755"
  echo "dir /dev 0755"
  echo "nod /dev/console 0600 c 5 1"
  echo "dir /etc 0755"
  echo "dir /etc/ft 0755"
  echo "file /etc/ft/trust-root.pub $(realpath "$TRUST_ROOT_PUB") 0644"
  echo "dir /proc 0555"
  echo "dir /run 0755"
  echo "dir /sys 0555"
  echo "dir /tmp 1777"
  echo "file /init $BIN/init 0755"
  for b in ftvmm heartbeat fencing; do echo "file /bin/$b $BIN/$b 0755"; done
  # Started by init only when the signed config enables the "pr" test hook ([test] hooks; QEMU tests).
  echo "file /bin/ft-pr-test $BIN/ft-pr-test 0755"
  echo "tree /lib/modules/$KERNEL_RELEASE $STAGE/modules"
  # Guest images: keep in step with config-schema/src/images.rs SHIPPED_IMAGES (a test there reads this line).
  if [[ -n "$GUEST_ELF" ]]; then echo "file /lib/ftvmm/guests/kv-guest.elf $GUEST_ELF 0644"; fi
} > "$STAGE/initramfs.manifest"

ISO_ROOT="$BUILD/iso"
rm -rf "$ISO_ROOT" && mkdir -p "$ISO_ROOT/boot/grub" "$ISO_ROOT/isolinux"
"$BIN/mkinitramfs" --manifest "$STAGE/initramfs.manifest" --mtime "$SOURCE_DATE_EPOCH" \
  --compress gzip --out "$ISO_ROOT/boot/initrd.img" 2>/dev/null
cp "$VMLINUZ" "$ISO_ROOT/boot/vmlinuz"

# --- boot menus: locked (image/src/bootcfg.rs) ---------------------------------------------
# One entry, booted at once; no prompt, no editing, no boot-loader command line, no typed
# kernel options. mkbootcfg refuses a command line with ft.* options (test hooks come only
# from the signed config) or characters a boot loader would interpret, and --check refuses
# configs that are not locked.
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$ISO_ROOT/isolinux/"
"$BIN/mkbootcfg" --cmdline "$KERNEL_CMDLINE" --label "$ISO_LABEL" \
  --isolinux "$ISO_ROOT/isolinux/isolinux.cfg" --grub "$ISO_ROOT/boot/grub/grub.cfg" \
  --grub-embed "$STAGE/grub-embed.cfg" || die "cannot write the boot menus (FT_KERNEL_CMDLINE?)"
"$BIN/mkbootcfg" --check --isolinux "$ISO_ROOT/isolinux/isolinux.cfg" --grub "$ISO_ROOT/boot/grub/grub.cfg"

# --- UEFI: GRUB in a FAT image -------------------------------------------------------
grub-mkimage -O x86_64-efi -o "$STAGE/BOOTX64.EFI" -p /boot/grub -c "$STAGE/grub-embed.cfg" \
  normal configfile search search_label iso9660 fat part_gpt part_msdos linux echo test \
  all_video efi_gop efi_uga gzio
efi_kb=$(( ($(stat -c %s "$STAGE/BOOTX64.EFI") / 1024 + 256 + 31) / 32 * 32 ))
mkfs.fat -C -n EFIBOOT --invariant "$ISO_ROOT/boot/grub/efi.img" "$efi_kb" >/dev/null
MTOOLS_SKIP_CHECK=1 mmd -i "$ISO_ROOT/boot/grub/efi.img" ::/EFI ::/EFI/BOOT
MTOOLS_SKIP_CHECK=1 mcopy -i "$ISO_ROOT/boot/grub/efi.img" "$STAGE/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

# --- ISO ---------------------------------------------------------------------------------
find "$ISO_ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
ISO_DATE="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S00)"
mkdir -p "$OUT"
rm -f "$OUT/ftappliance.iso.tmp"
xorriso -report_about SORRY -as mkisofs -o "$OUT/ftappliance.iso.tmp" -V "$ISO_LABEL" -r -iso-level 3 \
  -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  -eltorito-alt-boot -e boot/grub/efi.img -no-emul-boot -isohybrid-gpt-basdat \
  --modification-date="$ISO_DATE" --set_all_file_dates "$ISO_DATE" --gpt_disk_guid modification-date \
  "$ISO_ROOT" 2> "$STAGE/xorriso.log" || { cat "$STAGE/xorriso.log" >&2; die "xorriso failed"; }
mv "$OUT/ftappliance.iso.tmp" "$OUT/ftappliance.iso"
(cd "$OUT" && sha256sum ftappliance.iso > ftappliance.iso.sha256)

say "kernel:     $KERNEL_PACKAGE $KERNEL_VERSION, cmdline: $KERNEL_CMDLINE"
say "trust root: $TRUST_ROOT_PUB ($(od -An -tx1 -v "$TRUST_ROOT_PUB" | tr -d ' \n' | cut -c1-16)...)"
say "initramfs:  $(stat -c %s "$ISO_ROOT/boot/initrd.img") bytes (gzip)"
say "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, took $((SECONDS - START)) s"
say "wrote $OUT/ftappliance.iso ($(stat -c %s "$OUT/ftappliance.iso") bytes)"
say "sha256 $(cut -d' ' -f1 "$OUT/ftappliance.iso.sha256")"
