#!/usr/bin/env bash
# Install the system packages the tests need (Debian/Ubuntu). Idempotent; does
# nothing when everything is present. Needs root or sudo for apt-get.
set -euo pipefail

need=()
command -v mkfifo >/dev/null || need+=(coreutils)
command -v awk >/dev/null || need+=(gawk)
command -v setsid >/dev/null || need+=(util-linux)

if [ ${#need[@]} -gt 0 ]; then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi
