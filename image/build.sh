#!/usr/bin/env bash
# Builds the appliance ISO: out/ftappliance.iso and out/ftappliance.iso.sha256.
#
# The bytes depend only on: the git tree (sources, Cargo.lock, image/kernel.lock,
# image/firmware.lock, image/iscsi.lock),
# the Rust toolchain, the tool versions in image/tools.lock, SOURCE_DATE_EPOCH,
# the trust-root public key and the kernel command line. See image/README.md.
#
# Environment:
#   SOURCE_DATE_EPOCH   time stamp of every file (default: last commit time, else 1700000000)
#   FT_TRUST_ROOT_PUB   raw 32-byte Ed25519 config-signing public key
#                       (default: examples/dev-keys/signing.pub, the development key)
#   FT_KERNEL_CMDLINE   kernel command line (default below)
#   FT_CACHE_DIR        where the kernel, firmware and iSCSI .debs are kept (default: build/cache)
#   FT_DEBIAN_MIRROR    where the firmware .deb is fetched from (default: http://deb.debian.org/debian)
#   FT_ISO_BUDGET_BYTES the largest ISO the build accepts (default: 64 MiB)
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
# Consoles: the screen (tty0) and COM1 (ttyS0), which as the last is /dev/console (the daemons'
# output). Linux takes one console per driver (8250: one serial port; with console=ttyS1 and
# console=ttyS0 both, only ttyS1 is a console), so COM2 (ttyS1), where many BMCs put
# serial-over-LAN, is not named here: init writes its own lines there too (init/src/console.rs).
KERNEL_CMDLINE="${FT_KERNEL_CMDLINE:-console=tty0 console=ttyS0,115200 panic=10 loglevel=4 no_timer_check}"
TRUST_ROOT_PUB="${FT_TRUST_ROOT_PUB:-examples/dev-keys/signing.pub}"
BUILD="$REPO/build"
CACHE="${FT_CACHE_DIR:-$BUILD/cache}"
TARGET_DIR="${FT_TARGET_DIR:-$BUILD/target}"
OUT="${FT_OUT_DIR:-$REPO/out}"
TRIPLE=x86_64-unknown-linux-gnu
# The modules, by group: image/drivers.txt (docs/hardware.md explains the choice).
DRIVERS=image/drivers.txt
FIRMWARE_LOCK=image/firmware.lock
# /sbin/iscsid, /sbin/iscsiadm and their shared libraries, from pinned Debian packages.
ISCSI_LOCK=image/iscsi.lock
DEBIAN_MIRROR="${FT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ISO_BUDGET_BYTES="${FT_ISO_BUDGET_BYTES:-$((64 * 1024 * 1024))}"
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

# --- firmware (image/firmware.lock) ----------------------------------------------------
# Debian ships it in the non-free-firmware component, which the build machine's apt sources
# may lack: apt-get runs with a sources list and index of its own below the cache dir.
read -r _ FW_PACKAGE FW_VERSION FW_DEB_SHA256 < <(grep '^package ' "$FIRMWARE_LOCK")
FW_DEB="$CACHE/${FW_PACKAGE}_${FW_VERSION//:/%3a}_all.deb"
if [[ ! -f "$FW_DEB" ]]; then
  say "fetching $FW_PACKAGE=$FW_VERSION (non-free-firmware) with apt-get download"
  APT_DIR="$CACHE/apt-non-free-firmware"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR bookworm non-free-firmware" > "$APT_DIR/sources.list"
  APT_OPTS=(-q -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache")
  if ! { apt-get "${APT_OPTS[@]}" update >/dev/null \
         && (cd "$CACHE" && apt-get "${APT_OPTS[@]}" download "$FW_PACKAGE=$FW_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2); } \
     || [[ ! -f "$FW_DEB" ]]; then
    die "cannot download $FW_PACKAGE=$FW_VERSION from $DEBIAN_MIRROR (bookworm non-free-firmware).
       Copy the .deb (sha256 $FW_DEB_SHA256) into $CACHE/, set FT_DEBIAN_MIRROR, or bump image/firmware.lock."
  fi
fi
got="$(sha256sum "$FW_DEB" | cut -d' ' -f1)"
[[ "$got" == "$FW_DEB_SHA256" ]] || die "firmware package checksum mismatch for $FW_DEB
       expected sha256 $FW_DEB_SHA256 (image/firmware.lock)
       got      sha256 $got
       Refusing to build. Delete the file to fetch it again, or bump image/firmware.lock deliberately."
say "firmware $FW_PACKAGE $FW_VERSION (sha256 verified)"

# --- iSCSI initiator (image/iscsi.lock) --------------------------------------------------
# Each .deb fetched like the kernel's, checked against its pinned sha256 and unpacked
# (again only when the .deb changed). elfclosure, below, takes the libraries of the lock's
# programs (iscsid, iscsiadm) from these trees only.
ISCSI_ROOTS=() ISCSI_PKGS=()
while read -r _ pkg ver sha; do
  deb="$CACHE/${pkg}_${ver//:/%3a}_amd64.deb"
  if [[ ! -f "$deb" ]]; then
    say "fetching $pkg=$ver with apt-get download"
    if ! (cd "$CACHE" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || [[ ! -f "$deb" ]]; then
      die "cannot download $pkg=$ver (image/iscsi.lock). Run 'apt-get update' and retry. If Debian
       dropped this version from the mirror (security updates replace libraries), copy the .deb
       (sha256 $sha) into $CACHE/ from another build machine or snapshot.debian.org, or bump
       image/iscsi.lock to the current version (image/README.md)."
    fi
  fi
  got="$(sha256sum "$deb" | cut -d' ' -f1)"
  [[ "$got" == "$sha" ]] || die "iSCSI package checksum mismatch for $deb
       expected sha256 $sha (image/iscsi.lock)
       got      sha256 $got
       Refusing to build. Delete the file to fetch it again, or bump image/iscsi.lock deliberately."
  root="$BUILD/debs/$pkg"
  if [[ "$(cat "$root.sha256" 2>/dev/null || true)" != "$got" ]]; then
    rm -rf "$root" && mkdir -p "$root"
    dpkg-deb -x "$deb" "$root"
    echo "$got" > "$root.sha256"
  fi
  ISCSI_ROOTS+=(--root "$root") ISCSI_PKGS+=("$pkg $ver")
done < <(grep '^package ' "$ISCSI_LOCK")
((${#ISCSI_PKGS[@]})) || die "$ISCSI_LOCK pins no package"
say "iscsi: ${#ISCSI_PKGS[@]} packages (sha256 verified): $(IFS=,; echo "${ISCSI_PKGS[*]}" | sed 's/,/, /g')"

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
"$BIN/modclosure" --moddir "$MODDIR" --out "$STAGE/modules" --drivers "$DRIVERS" \
  --firmware-lock "$FIRMWARE_LOCK" > "$STAGE/modules.txt"
absent="$(awk '/^absent/ {printf "%s ", $2}' "$STAGE/modules.txt")"
say "modules: $(grep -c '^module' "$STAGE/modules.txt") files, absent: ${absent:-none}"

# Only the pinned files, each checked against its own sha256.
FW_UNPACK="$STAGE/firmware-deb"
mkdir -p "$FW_UNPACK" "$STAGE/firmware"
dpkg-deb --fsys-tarfile "$FW_DEB" | tar -x -C "$FW_UNPACK" ./lib/firmware
fw_bytes=0 fw_files=0
while read -r kind path sha module source; do
  [[ "$kind" == file ]] || continue
  src="$FW_UNPACK/lib/firmware/${source:-$path}"
  [[ -f "$src" ]] || die "$FW_PACKAGE $FW_VERSION has no lib/firmware/${source:-$path} (image/firmware.lock, for $module)"
  got="$(sha256sum "$src" | cut -d' ' -f1)"
  [[ "$got" == "$sha" ]] || die "firmware $path (for $module): sha256 $got, image/firmware.lock pins $sha"
  mkdir -p "$(dirname "$STAGE/firmware/$path")"
  cp "$src" "$STAGE/firmware/$path"
  fw_bytes=$((fw_bytes + $(stat -c %s "$src"))) fw_files=$((fw_files + 1))
done < "$FIRMWARE_LOCK"
rm -rf "$FW_UNPACK"
fw_gzip="$(find "$STAGE/firmware" -type f | sort | xargs cat | gzip -9n | wc -c)"
# iscsid, iscsiadm, the loader and the libraries: manifest lines from the
# unpacked packages only.
"$BIN/elfclosure" --lock "$ISCSI_LOCK" "${ISCSI_ROOTS[@]}" > "$STAGE/iscsi.manifest" \
  || die "cannot ship the iSCSI programs (iscsid, iscsiadm): a library they need is in none of the packages of $ISCSI_LOCK (above)"
mapfile -t iscsi_files < <(awk '$1 == "file" {print $3}' "$STAGE/iscsi.manifest")
iscsi_bytes="$(cat "${iscsi_files[@]}" | wc -c)"
iscsi_gzip="$(cat "${iscsi_files[@]}" | gzip -9n | wc -c)"
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
  echo "tree /lib/firmware $STAGE/firmware"
  # The iSCSI initiator (image/iscsi.lock): /sbin/iscsid, /sbin/iscsiadm,
  # /lib/x86_64-linux-gnu/*, and /lib64/ld-linux-x86-64.so.2 -> the loader. No /etc/iscsi
  # is shipped: iscsid and iscsiadm use
  # /etc/iscsi (initiatorname.iscsi, the node records) and /run/lock/iscsi at run time,
  # made by whoever starts them (image/README.md); /run is init's tmpfs.
  cat "$STAGE/iscsi.manifest"
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
iso_bytes="$(stat -c %s "$OUT/ftappliance.iso.tmp")"
if (( iso_bytes > ISO_BUDGET_BYTES )); then
  die "the ISO has $iso_bytes bytes, over the budget of $ISO_BUDGET_BYTES (FT_ISO_BUDGET_BYTES; docs/hardware.md):
       drop modules from image/drivers.txt or firmware from image/firmware.lock, or raise the budget deliberately"
fi
mv "$OUT/ftappliance.iso.tmp" "$OUT/ftappliance.iso"
(cd "$OUT" && sha256sum ftappliance.iso > ftappliance.iso.sha256)

say "kernel:     $KERNEL_PACKAGE $KERNEL_VERSION, cmdline: $KERNEL_CMDLINE"
say "trust root: $TRUST_ROOT_PUB ($(od -An -tx1 -v "$TRUST_ROOT_PUB" | tr -d ' \n' | cut -c1-16)...)"
say "initramfs:  $(stat -c %s "$ISO_ROOT/boot/initrd.img") bytes (gzip)"
say "size by group (uncompressed; gzip-compressed alone, about what each adds to the ISO):"
awk '/^group/ {printf "image:   modules %-9s %3d files %9d bytes %9d bytes gzip\n", $2, $3, $6, $8}' "$STAGE/modules.txt"
printf 'image:   firmware          %3d files %9d bytes %9d bytes gzip\n' "$fw_files" "$fw_bytes" "$fw_gzip"
printf 'image:   iscsi+libs        %3d files %9d bytes %9d bytes gzip (iscsid, iscsiadm)\n' "${#iscsi_files[@]}" "$iscsi_bytes" "$iscsi_gzip"
printf 'image:   kernel (vmlinuz)  %19d bytes\n' "$(stat -c %s "$ISO_ROOT/boot/vmlinuz")"
say "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, took $((SECONDS - START)) s"
say "wrote $OUT/ftappliance.iso ($iso_bytes bytes, budget $ISO_BUDGET_BYTES)"
say "sha256 $(cut -d' ' -f1 "$OUT/ftappliance.iso.sha256")"
