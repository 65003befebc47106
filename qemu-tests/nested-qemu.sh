#!/usr/bin/env bash
# Fetches, checks and unpacks the QEMU of qemu-tests/nested-qemu.lock into
# build/nested-qemu/root (why that QEMU: the lock's header). Idempotent and
# quiet when it is already there; fails with a message naming what is wrong.
#   FT_CACHE_DIR  where the .debs are kept (default: build/cache)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$REPO/qemu-tests/nested-qemu.lock"
CACHE="${FT_CACHE_DIR:-$REPO/build/cache}"
OUT="$REPO/build/nested-qemu"
die() { echo "nested-qemu: $*" >&2; exit 1; }

mirror="$(awk '$1 == "mirror" { print $2 }' "$LOCK")"
[[ -n "$mirror" ]] || die "$LOCK names no mirror"
want="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [[ "$(cat "$OUT/lock.sha256" 2>/dev/null || true)" == "$want" && -x "$OUT/root/usr/bin/qemu-system-x86_64" ]]; then
  exit 0
fi
mkdir -p "$CACHE"
rm -rf "$OUT" && mkdir -p "$OUT/root"
n=0
while read -r _ path sha; do
  deb="$CACHE/$(basename "$path")"
  if [[ ! -f "$deb" ]]; then
    echo "nested-qemu: fetching $mirror/$path"
    curl -fsS --retry 3 -o "$deb.part" "$mirror/$path" ||
      die "cannot download $mirror/$path (qemu-tests/nested-qemu.lock). Backports keep only
       their newest version: if the mirror dropped this one, bump the lock (its header says how)."
    mv "$deb.part" "$deb"
  fi
  got="$(sha256sum "$deb" | cut -d' ' -f1)"
  [[ "$got" == "$sha" ]] || die "checksum mismatch for $deb
       expected sha256 $sha (qemu-tests/nested-qemu.lock)
       got      sha256 $got
       Delete the file to fetch it again, or bump the lock deliberately."
  dpkg-deb -x "$deb" "$OUT/root"
  n=$((n + 1))
done < <(awk '$1 == "package"' "$LOCK")
((n)) || die "$LOCK pins no package"
bin="$OUT/root/usr/bin/qemu-system-x86_64"
missing="$(ldd "$bin" | awk '/not found/ { print $1 }' | tr '\n' ' ')"
[[ -z "$missing" ]] || die "$bin needs libraries this machine lacks: $missing(image/prereqs.sh installs Debian 12's qemu-system-x86, whose libraries it uses)"
"$bin" --version | sed -n '1s/^/nested-qemu: /p'
echo "$want" > "$OUT/lock.sha256"
