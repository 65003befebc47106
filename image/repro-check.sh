#!/usr/bin/env bash
# Reproducibility check: builds the ISO from two fresh clones of the committed
# tree (different directories and path lengths, different file mtimes, each
# with its own cargo target dir) and compares the sha256 of the results.
# Exits non-zero when they differ and leaves both trees for inspection.
#
# Only committed files take part (git clone of HEAD). The kernel .deb cache is
# shared (FT_CACHE_DIR, default build/cache of this checkout): its content is
# pinned by sha256, so sharing it cannot change the bytes, only save a download.
# Environment: FT_KEEP=1 keeps the trees on success; FT_TRUST_ROOT_PUB as for build.sh.
#
# Fast mode (`make test`): `--against-worktree` uses this checkout's own
# out/ftappliance.iso as the first build when the checkout is clean (nothing
# uncommitted, nothing untracked outside .gitignore) - then this checkout is
# itself a clean tree of HEAD, and one more build from a fresh clone suffices.
# On a dirty checkout it falls back to the full two-clone check.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FT_CACHE_DIR:-$REPO/build/cache}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
if [[ -n "${FT_TRUST_ROOT_PUB:-}" ]]; then
  FT_TRUST_ROOT_PUB="$(realpath "$FT_TRUST_ROOT_PUB")"
  export FT_TRUST_ROOT_PUB
fi
unset FT_TARGET_DIR FT_OUT_DIR CARGO_TARGET_DIR SOURCE_DATE_EPOCH
START=$SECONDS

if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
  echo "repro-check: NOTE: uncommitted changes in $REPO are not part of this check (it clones HEAD)"
fi

AGAINST=""
if [[ "${1:-}" == "--against-worktree" ]]; then
  if [[ -z "$(git -C "$REPO" status --porcelain)" && -f "$REPO/out/ftappliance.iso.sha256" ]]; then
    AGAINST="$(cut -d' ' -f1 "$REPO/out/ftappliance.iso.sha256")"
    echo "repro-check: first build = this clean checkout's out/ftappliance.iso ($AGAINST)"
  else
    echo "repro-check: checkout is not clean (or has no ISO): full two-clone check"
  fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ft-repro.XXXXXX")"
TREES=("$WORK/one" "$WORK/second-tree")
for t in "${TREES[@]}"; do
  git clone -q "$REPO" "$t"
done
# Give the second tree very different file times (the first keeps checkout time).
find "${TREES[1]}" -path "${TREES[1]}/.git" -prune -o -exec touch -h -d '2001-02-03 04:05:06' {} +

sums=()
if [[ -n "$AGAINST" ]]; then
  rm -rf "${TREES[0]}"
  TREES[0]="$REPO"
  sums+=("$AGAINST")
fi
for t in "${TREES[@]}"; do
  [[ -n "$AGAINST" && "$t" == "$REPO" ]] && continue
  echo "repro-check: building in $t"
  t0=$SECONDS
  if ! FT_CACHE_DIR="$CACHE" bash "$t/image/build.sh" > "$t.log" 2>&1; then
    echo "repro-check: build in $t failed; log tail:" >&2
    tail -n 30 "$t.log" >&2
    exit 1
  fi
  sums+=("$(cut -d' ' -f1 "$t/out/ftappliance.iso.sha256")")
  echo "repro-check:   $((SECONDS - t0)) s, sha256 ${sums[-1]}"
done

echo "repro-check: ${TREES[0]}: ${sums[0]}"
echo "repro-check: ${TREES[1]}: ${sums[1]}"
if [[ "${sums[0]}" != "${sums[1]}" ]]; then
  echo "repro-check: MISMATCH: the two builds differ. Files that differ:" >&2
  (cd "${TREES[0]}/build/iso" && find . -type f | sort) | while read -r f; do
    cmp -s "${TREES[0]}/build/iso/$f" "${TREES[1]}/build/iso/$f" || echo "  iso:$f" >&2
  done
  for b in init ftvmm heartbeat fencing; do
    p="build/target/x86_64-unknown-linux-gnu/release/$b"
    cmp -s "${TREES[0]}/$p" "${TREES[1]}/$p" || echo "  binary: $b" >&2
  done
  echo "repro-check: inspect with (apt-get install diffoscope):" >&2
  echo "  diffoscope ${TREES[0]}/out/ftappliance.iso ${TREES[1]}/out/ftappliance.iso" >&2
  echo "  diffoscope ${TREES[0]}/build/iso/boot/initrd.img ${TREES[1]}/build/iso/boot/initrd.img" >&2
  echo "repro-check: trees kept in $WORK" >&2
  exit 1
fi
echo "repro-check: OK, identical ($((SECONDS - START)) s in total)"
if [[ "${FT_KEEP:-0}" == 1 ]]; then
  echo "repro-check: trees kept in $WORK"
else
  rm -rf "$WORK"
fi
