#!/bin/sh
# `docker` for the guest: the real docker CLI (docker-ce-cli, with its compose and
# buildx plugins), talking to podman's Docker-compatible socket instead of a
# Docker daemon. Starts `podman system service` on first use. Containers get the
# VM's network (`--network host`) unless the command names one: inside a microVM
# there is no bridge to attach them to.
set -eu

real=${DOCKER_REAL_CLI:-/usr/bin/docker}
[ -x "$real" ] || {
  echo "docker: $real (docker-ce-cli) is not installed" >&2
  exit 127
}

if [ -z "${DOCKER_HOST:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    sock=/run/podman/podman.sock
  else
    sock=${XDG_RUNTIME_DIR:-/tmp/podman-run-$(id -u)}/podman/podman.sock
  fi
  if [ ! -S "$sock" ]; then
    mkdir -p "$(dirname "$sock")"
    nohup podman system service --time=0 "unix://$sock" >/dev/null 2>&1 &
    i=0
    while [ ! -S "$sock" ] && [ "$i" -lt 50 ]; do
      sleep 0.1
      i=$((i + 1))
    done
  fi
  export DOCKER_HOST="unix://$sock"
fi

# Does the command already choose a network?
names_network() {
  for a in "$@"; do
    case "$a" in
      --network | --network=* | --net | --net=*) return 0 ;;
      --) return 1 ;;
    esac
  done
  return 1
}

case "${1:-}" in
  run | create)
    sub=$1
    shift
    if names_network "$@"; then
      exec "$real" "$sub" "$@"
    fi
    exec "$real" "$sub" --network host "$@"
    ;;
  build)
    shift
    if names_network "$@"; then
      exec "$real" build "$@"
    fi
    exec "$real" build --network host "$@"
    ;;
  *) exec "$real" "$@" ;;
esac
