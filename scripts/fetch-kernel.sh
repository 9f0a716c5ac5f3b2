#!/usr/bin/env bash
# Fetch a Debian kernel and its modules for guest bundles, without installing it:
# `apt-get download linux-image-<ver>-amd64-unsigned`, unpacked into a cache.
#
#   scripts/fetch-kernel.sh [CACHE_DIR]
#
# Prints the directory holding vmlinuz and lib/modules/<ver>/. Picks the newest
# 6.1 kernel the archive offers (the series the QEMU microvm notes were checked
# with), else the newest generic amd64 one. Set GHRM_KERNEL_PACKAGE to choose.
set -euo pipefail
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/gh-runner-microvm/kernel}

pkg=${GHRM_KERNEL_PACKAGE:-}
if [ -z "$pkg" ]; then
  list=$(apt-cache search --names-only '^linux-image-[0-9].*-amd64-unsigned$' | awk '{print $1}' | grep -v -e cloud -e '-rt-' | sort -V)
  if [ -z "$list" ]; then
    apt-get update -qq >&2 || true
    list=$(apt-cache search --names-only '^linux-image-[0-9].*-amd64-unsigned$' | awk '{print $1}' | grep -v -e cloud -e '-rt-' | sort -V)
  fi
  pkg=$(printf '%s\n' "$list" | grep '^linux-image-6\.1\.' | tail -n1)
  [ -n "$pkg" ] || pkg=$(printf '%s\n' "$list" | tail -n1)
fi
[ -n "$pkg" ] || { echo "fetch-kernel: no linux-image-*-amd64-unsigned package in the apt sources" >&2; exit 1; }

dir=$cache/$pkg
if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && apt-get download -q "$pkg" >&2)
  dpkg-deb -x "$dir"/*.deb "$dir/root"
  rm -f "$dir"/*.deb
  ver=$(ls "$dir/root/lib/modules")
  ln -s "root/boot/vmlinuz-$ver" "$dir/vmlinuz"
  ln -s "root/lib/modules/$ver" "$dir/modules"
  touch "$dir/.complete"
fi
echo "$dir"
