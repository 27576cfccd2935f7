#!/usr/bin/env bash
# Prints the path of a Debian trixie chroot with Swift 6 (Debian's `swiftlang`), creating it
# when missing. Debian 12 has no Swift; trixie's runs in a chroot on the same kernel, and
# binaries it builds load the host-built Rust library copied into the chroot.
#
# Cached outside the repository: ${TM_TOOL_CACHE:-$HOME/.cache/trailmark}/swift-trixie.
# Needs root (debootstrap, chroot and bind mounts), as CI has. ~1 minute the first time.
set -euo pipefail
cache="${TM_TOOL_CACHE:-$HOME/.cache/trailmark}"
dir="$cache/swift-trixie"
if [ -x "$dir/usr/bin/swiftc" ] && [ -f "$dir/.trailmark-ready" ]; then
  echo "$dir"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "swift-chroot: creating the Swift chroot needs root" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi
rm -rf "$dir"
mkdir -p "$cache"
echo "swift-chroot: debootstrap trixie into $dir" >&2
debootstrap --variant=minbase trixie "$dir" http://deb.debian.org/debian >&2
cleanup() {
  umount "$dir/proc" 2>/dev/null || true
  umount "$dir/dev" 2>/dev/null || true
}
trap cleanup EXIT
mount -t proc proc "$dir/proc"
mount --bind /dev "$dir/dev"
cp /etc/resolv.conf "$dir/etc/resolv.conf"
chroot "$dir" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
  'apt-get update -qq && apt-get install -y -qq --no-install-recommends swiftlang libcurl4 ca-certificates libc6-dev libstdc++-14-dev libgcc-14-dev >/dev/null' >&2
chroot "$dir" swiftc --version >&2
touch "$dir/.trailmark-ready"
echo "$dir"
