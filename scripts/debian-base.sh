#!/usr/bin/env bash
# Make a Debian base image with debootstrap and import it into buildah as IMAGE
# (default localhost/gh-runner-microvm-debian:bookworm). For tests and offline
# builds of the Containerfile on machines that cannot pull ubuntu or fedora:
#   buildah bud --build-arg BASE_IMAGE=localhost/gh-runner-microvm-debian:bookworm ...
# The debootstrap tree is cached as a tarball (~60 MB) under
# ${XDG_CACHE_HOME:-~/.cache}/gh-runner-microvm/debian-base/; the mirror is the
# one apt uses (MIRROR overrides). debootstrap needs root: as another user it runs
# with sudo, and the import runs in `buildah unshare` (rootless buildah mounts
# containers only in its user namespace).
set -euo pipefail

image=${1:-localhost/gh-runner-microvm-debian:bookworm}
suite=${SUITE:-bookworm}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/gh-runner-microvm/debian-base
tarball=$cache/$suite-minbase.tar

if [ ! -s "$tarball" ]; then
  # debootstrap lives in sbin, which a user's PATH often lacks.
  debootstrap=$(PATH=$PATH:/usr/sbin:/sbin command -v debootstrap) || {
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
  echo "debian-base: debootstrap --variant=minbase $suite from $MIRROR" >&2
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  trap '"${as_root[@]}" rm -rf "$work"' EXIT
  "${as_root[@]}" "$debootstrap" --variant=minbase "$suite" "$work/root" "$MIRROR" >"$work/log" 2>&1 || {
    tail -n 20 "$work/log" >&2
    exit 1
  }
  # Nothing of the build host's apt state or logs in the image.
  # shellcheck disable=SC2016 # expanded by the inner shell
  "${as_root[@]}" sh -c 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/log/*' sh "$work/root"
  "${as_root[@]}" tar -C "$work/root" --numeric-owner -cf "$tarball.partial" .
  "${as_root[@]}" chown "$(id -u):$(id -g)" "$tarball.partial"
  mv "$tarball.partial" "$tarball"
  "${as_root[@]}" rm -rf "$work"
  trap - EXIT
fi

command -v buildah >/dev/null || {
  echo "debian-base: buildah is not installed (apt-get install buildah)" >&2
  exit 1
}
if [ "$(id -u)" != 0 ] && [ -z "${BUILDAH_ISOLATION:-}" ]; then
  exec buildah unshare "$0" "$image"
fi

ctr=$(buildah from --quiet scratch)
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mnt=$(buildah mount "$ctr")
tar -C "$mnt" --numeric-owner -xpf "$tarball"
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
buildah commit --quiet "$ctr" "$image" >/dev/null
echo "$image"
