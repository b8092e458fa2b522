#!/usr/bin/env bash
# Runs igrad's test workflow (`cmake --workflow --preset test`) against Debian 13's LibTorch 2.x
# (libtorch-dev 2.6, g++ 14, CMake 3.31) in a debootstrapped Debian 13 root, so that every change is
# also checked on the LibTorch generation most users build with. Needs root (chroot, mount).
#
#   tools/ci/debian13.sh            # create or reuse the root, copy the tree in, build and test
#   tools/ci/debian13.sh unit       # the same with the lighter `unit` workflow (.ci/run's lane)
#   tools/ci/debian13.sh prepare    # only create the root and install the packages the workflows'
#                                   # configure step asks for (downloads and unpacking: .ci/run
#                                   # does this in the background while its first lane compiles)
#
# The root is cached in $IGRAD_DEBIAN13_ROOT (default /var/cache/igrad/debian13-root): created once
# (~4 min), reused afterwards. The tree (tracked and untracked, not ignored files) is copied afresh
# to /igrad inside the root and built from scratch, as CI builds a clean clone.
set -euo pipefail

workflow=${1:-test}
case "$workflow" in
  test | unit | demo | prepare) ;;
  *) echo "tools/ci/debian13.sh: unknown workflow '$workflow'; expected test, unit, demo or prepare" >&2; exit 2 ;;
esac

src=$(cd "$(dirname "$0")/../.." && pwd)
root=${IGRAD_DEBIAN13_ROOT:-/var/cache/igrad/debian13-root}

if [ "$(id -u)" != 0 ]; then
  echo "tools/ci/debian13.sh: needs root (debootstrap, chroot and mount); run it with sudo" >&2
  exit 2
fi

# The same Debian mirror the host uses (this machine reaches no other).
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-$(sed -n 's/^deb \(http[^ ]*\) .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}

if [ ! -x "$root/usr/bin/cmake" ]; then
  command -v debootstrap >/dev/null || {
    echo "debootstrap: installing it from Debian's archive"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  }
  echo "Debian 13 root: creating $root from $mirror (a few minutes, once)"
  rm -rf "$root.partial"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase --include=cmake,g++,make,git,ca-certificates \
    trixie "$root.partial" "$mirror" >"$(dirname "$root")/debootstrap.log" 2>&1 || {
      tail -n 20 "$(dirname "$root")/debootstrap.log" >&2
      exit 1
    }
  rm -rf "$root"
  mv "$root.partial" "$root"
fi

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for fs in proc dev; do
  if ! mountpoint -q "$root/$fs"; then
    if [ "$fs" = proc ]; then mount -t proc proc "$root/proc"; else mount --bind /dev "$root/dev"; fi
    mounted+=("$root/$fs")
  fi
done
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# A fresh copy of the tree: a build folder left by an interrupted run (a half-written
# precompiled header, say) must not leak into this one.
rm -rf "$root/igrad"
mkdir -p "$root/igrad"
(cd "$src" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$root/igrad"

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 bash -c "cd /igrad && $1"
}
if [ "$workflow" = prepare ]; then
  # The test preset's configure installs, through igrad's bootstrap, every package a workflow needs.
  in_root "cmake --preset default >/dev/null && rm -rf build"
  echo "Debian 13 root: ready in $root"
  exit 0
fi
echo "Debian 13 lane: $(chroot "$root" sh -c 'g++ --version | head -n 1; cmake --version | head -n 1')"
in_root "cmake --workflow --preset $workflow"
