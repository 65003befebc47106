#!/usr/bin/env bash
# Boot-time table for the appliance image under QEMU TCG (`make bench`).
#
# Measures wall time from QEMU start to the first console line that proves our
# /init runs, for: the ISO under SeaBIOS (ISOLINUX), the ISO under OVMF (GRUB),
# the ISO's kernel+initramfs loaded directly (-kernel/-initrd), and the same
# kernel with a reference initramfs holding only `refinit` (prints a line,
# powers off). Needs out/ftappliance.iso (make image).
#
# Environment: FT_BENCH_RUNS (default 3), FT_BOOT_MARKER (regex for "init runs";
# default covers the init's console contract and the placeholder init's panic),
# FT_TARGET_DIR (as for build.sh), FT_BOOT_TIMEOUT seconds per boot (default 180).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ISO="${FT_ISO:-out/ftappliance.iso}"
RUNS="${FT_BENCH_RUNS:-3}"
TIMEOUT="${FT_BOOT_TIMEOUT:-180}"
MARKER="${FT_BOOT_MARKER:-appliance ready|config refused|Attempted to kill init}"
REF_MARKER="refinit: reached /init"
TARGET_DIR="${FT_TARGET_DIR:-$REPO/build/target}"
REFINIT="$TARGET_DIR/x86_64-unknown-linux-gnu/release/refinit"
MKINITRAMFS="$TARGET_DIR/x86_64-unknown-linux-gnu/release/mkinitramfs"
CMDLINE="console=ttyS0,115200 panic=10 loglevel=4"
OVMF=/usr/share/ovmf/OVMF.fd
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -m 1024 -nographic -no-reboot)
WORK="$REPO/build/bench"

[[ -f "$ISO" ]] || { echo "bench-boot: $ISO missing: run 'make image' first" >&2; exit 1; }
[[ -x "$REFINIT" && -x "$MKINITRAMFS" ]] || { echo "bench-boot: $REFINIT missing: run 'make image' first" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "bench-boot: qemu-system-x86_64 missing (image/prereqs.sh installs it)" >&2; exit 1; }

rm -rf "$WORK" && mkdir -p "$WORK"
xorriso -osirrox on -indev "$ISO" -extract /boot/vmlinuz "$WORK/vmlinuz" \
  -extract /boot/initrd.img "$WORK/initrd.img" >/dev/null 2>&1
cat > "$WORK/ref.manifest" <<EOF
dir /dev 0755
nod /dev/console 0600 c 5 1
file /init $REFINIT 0755
EOF
"$MKINITRAMFS" --manifest "$WORK/ref.manifest" --mtime 0 --out "$WORK/ref-initrd.img" 2>/dev/null

# boot_once MARKER QEMU-ARGS... : prints seconds from start to the marker line, or fails.
boot_once() {
  local marker="$1"; shift
  local log="$WORK/console.log"
  local t0 now pid
  : > "$log"
  t0=$(date +%s%N)
  "${QEMU[@]}" "$@" </dev/null >"$log" 2>&1 &
  pid=$!
  while :; do
    if grep -qaE "$marker" "$log"; then
      now=$(date +%s%N)
      break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench-boot: QEMU exited before \"$marker\"; console tail:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    if (( ($(date +%s%N) - t0) / 1000000000 > TIMEOUT )); then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      echo "bench-boot: no \"$marker\" within ${TIMEOUT}s; console tail:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.05
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.2f\n", (b - a) / 1e9 }'
}

# row NAME MARKER QEMU-ARGS... : one table row with median/min/max of RUNS boots.
row() {
  local name="$1" marker="$2"; shift 2
  local times=() t
  for ((i = 0; i < RUNS; i++)); do
    t=$(boot_once "$marker" "$@") || { printf '%-34s %8s\n' "$name" "FAILED"; return 1; }
    times+=("$t")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v n="$name" '
    { v[NR] = $1 }
    END { printf "%-34s %8.2f %8.2f %8.2f   %s\n", n, v[int((NR + 1) / 2)], v[1], v[NR], NR }'
}

echo "ISO: $ISO  $(stat -c %s "$ISO") bytes  sha256 $(sha256sum "$ISO" | cut -c1-16)..."
echo "initramfs: $(stat -c %s "$WORK/initrd.img") bytes; reference initramfs: $(stat -c %s "$WORK/ref-initrd.img") bytes"
echo "QEMU TCG -cpu max -m 1024; seconds from QEMU start to init running (marker: $MARKER)"
printf '%-34s %8s %8s %8s   %s\n' "boot" "median" "min" "max" "runs"
status=0
row "ISO, SeaBIOS + ISOLINUX" "$MARKER" -cdrom "$ISO" || status=1
if [[ -f "$OVMF" ]]; then
  row "ISO, OVMF + GRUB (UEFI)" "$MARKER" -bios "$OVMF" -cdrom "$ISO" || status=1
fi
row "kernel + appliance initramfs" "$MARKER" -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -append "$CMDLINE" || status=1
row "kernel + refinit (reference)" "$REF_MARKER" -kernel "$WORK/vmlinuz" -initrd "$WORK/ref-initrd.img" -append "$CMDLINE" || status=1
exit "$status"
