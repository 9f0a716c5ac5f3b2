#!/usr/bin/env bash
# Make a Debian base image with debootstrap and import it into buildah as IMAGE
# (default localhost/gh-runner-microvm-debian:bookworm). For tests and offline
# builds of the Containerfile on machines that cannot pull ubuntu or fedora:
#   buildah bud --build-arg BASE_IMAGE=localhost/gh-runner-microvm-debian:bookworm ...
# The debootstrap tree is cached as a tarball (~60 MB) under
# ${XDG_CACHE_HOME:-~/.cache}/gh-runner-microvm/debian-base/; the mirror is the
# one apt uses (MIRROR overrides). Needs root (debootstrap), or run it under
# `buildah unshare` with a cached tarball.
set -euo pipefail

image=${1:-localhost/gh-runner-microvm-debian:bookworm}
suite=${SUITE:-bookworm}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/gh-runner-microvm/debian-base
tarball=$cache/$suite-minbase.tar

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    echo "debian-base: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
  }
  if [ -z "${MIRROR:-}" ]; then
    # The mirror apt already reaches (deb822 or one-line sources).
    MIRROR=$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1 | tr -d ' ' || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
  fi
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.debootstrap.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "debian-base: debootstrap --variant=minbase $suite from $MIRROR" >&2
  debootstrap --variant=minbase "$suite" "$work/root" "$MIRROR" >"$work/log" 2>&1 || {
    tail -n 20 "$work/log" >&2
    exit 1
  }
  # Nothing of the build host's apt state or logs in the image.
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/log/"*
  tar -C "$work/root" --numeric-owner -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  rm -rf "$work"
  trap - EXIT
fi

command -v buildah >/dev/null || {
  echo "debian-base: buildah is not installed (apt-get install buildah)" >&2
  exit 1
}
ctr=$(buildah from --quiet scratch)
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mnt=$(buildah mount "$ctr")
tar -C "$mnt" --numeric-owner -xpf "$tarball"
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
buildah commit --quiet "$ctr" "$image" >/dev/null
echo "$image"
