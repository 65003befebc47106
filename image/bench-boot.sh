#!/usr/bin/env bash
# Boot-time table for the appliance image under QEMU TCG (`make bench`).
#
# Measures wall time from QEMU start to the first console line that proves our
# /init runs, for: the ISO under SeaBIOS (ISOLINUX), the ISO under OVMF (GRUB),
# the ISO's kernel+initramfs loaded directly (-kernel/-initrd), and the same
# kernel with a reference initramfs holding only `refinit` (prints a line,
# powers off). Needs out/ftappliance.iso (make image).
#
# A second column times the end of init's boot work (FT_DONE_MARKER: `appliance
# ready` or `config refused`; without a config disk it is the latter).
# Environment: FT_BENCH_RUNS (default 3), FT_BOOT_MARKER (regex for "init runs";
# default: init's first line, or the kernel's panic when a placeholder init exits),
# FT_TARGET_DIR (as for build.sh), FT_BOOT_TIMEOUT seconds per boot (default 180).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ISO="${FT_ISO:-out/ftappliance.iso}"
RUNS="${FT_BENCH_RUNS:-3}"
TIMEOUT="${FT_BOOT_TIMEOUT:-180}"
MARKER="${FT_BOOT_MARKER:-init running|Attempted to kill init}"
DONE_MARKER="${FT_DONE_MARKER:-appliance ready|config refused}"
REF_MARKER="refinit: reached /init"
TARGET_DIR="${FT_TARGET_DIR:-$REPO/build/target}"
REFINIT="$TARGET_DIR/x86_64-unknown-linux-gnu/release/refinit"
MKINITRAMFS="$TARGET_DIR/x86_64-unknown-linux-gnu/release/mkinitramfs"
CMDLINE="console=tty0 console=ttyS0,115200 panic=10 loglevel=4 no_timer_check"
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

# wait_for LOG PID T0 MARKER: prints seconds from T0 to the first line matching MARKER.
wait_for() {
  local log="$1" pid="$2" t0="$3" marker="$4" now
  while :; do
    if grep -qaE "$marker" "$log"; then
      now=$(date +%s%N)
      awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.2f\n", (b - a) / 1e9 }'
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench-boot: QEMU exited before \"$marker\"; console tail:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    if (( ($(date +%s%N) - t0) / 1000000000 > TIMEOUT )); then
      echo "bench-boot: no \"$marker\" within ${TIMEOUT}s; console tail:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.05
  done
}

# boot_once MARKER DONE QEMU-ARGS... : prints "<s to MARKER> <s to DONE or ->".
boot_once() {
  local marker="$1" done_marker="$2"; shift 2
  local log="$WORK/console.log" t0 pid t1 t2="-" rc=0
  : > "$log"
  t0=$(date +%s%N)
  "${QEMU[@]}" "$@" </dev/null >"$log" 2>&1 &
  pid=$!
  if t1=$(wait_for "$log" "$pid" "$t0" "$marker"); then
    if [[ -n "$done_marker" ]] && ! grep -qa "Attempted to kill init" "$log"; then
      t2=$(wait_for "$log" "$pid" "$t0" "$done_marker") || t2="-"
    fi
  else
    rc=1
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [[ $rc == 0 ]] && echo "$t1 $t2"
  return $rc
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0 || v[1] == "-") print "-"; else printf "%.2f %.2f %.2f", v[int((NR + 1) / 2)], v[1], v[NR] }'; }

# row NAME MARKER DONE QEMU-ARGS... : one table row over RUNS boots.
row() {
  local name="$1" marker="$2" done_marker="$3"; shift 3
  local t1s=() t2s=() t
  for ((i = 0; i < RUNS; i++)); do
    t=$(boot_once "$marker" "$done_marker" "$@") || { printf '%-32s %s\n' "$name" "FAILED"; return 1; }
    t1s+=("${t% *}")
    [[ "${t#* }" != "-" ]] && t2s+=("${t#* }")
  done
  read -r m1 lo1 hi1 <<<"$(printf '%s\n' "${t1s[@]}" | median)"
  if ((${#t2s[@]})); then m2="$(printf '%s\n' "${t2s[@]}" | median | cut -d' ' -f1)"; else m2="-"; fi
  printf '%-32s %10s %6s %6s %14s %5s\n' "$name" "$m1" "$lo1" "$hi1" "$m2" "$RUNS"
}

echo "ISO: $ISO  $(stat -c %s "$ISO") bytes  sha256 $(sha256sum "$ISO" | cut -c1-16)..."
echo "initramfs: $(stat -c %s "$WORK/initrd.img") bytes; reference initramfs: $(stat -c %s "$WORK/ref-initrd.img") bytes"
echo "QEMU TCG -cpu max -m 1024, seconds from QEMU start; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "init = first line matching /$MARKER/; done = /$DONE_MARKER/"
printf '%-32s %10s %6s %6s %14s %5s\n' "boot" "init(med)" "min" "max" "done(med)" "runs"
status=0
row "ISO, SeaBIOS + ISOLINUX" "$MARKER" "$DONE_MARKER" -cdrom "$ISO" || status=1
if [[ -f "$OVMF" ]]; then
  row "ISO, OVMF + GRUB (UEFI)" "$MARKER" "$DONE_MARKER" -bios "$OVMF" -cdrom "$ISO" || status=1
fi
row "kernel + appliance initramfs" "$MARKER" "$DONE_MARKER" -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -append "$CMDLINE" || status=1
row "kernel + refinit (reference)" "$REF_MARKER" "" -kernel "$WORK/vmlinuz" -initrd "$WORK/ref-initrd.img" -append "$CMDLINE" || status=1
exit "$status"
