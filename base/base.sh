#!/bin/sh
# Installs the runner environment of the base images (base/Containerfile.*), on
# Ubuntu/Debian (apt) or Fedora (dnf):
# - git with LFS, curl, jq, python3 with pip, node with npm, build tools, sudo,
#   zip/unzip/xz, openssh-client;
# - containers: podman, buildah, skopeo, and the docker CLI with the compose and
#   buildx plugins (from Docker's repository), with docker.sh in front of it so
#   that `docker` talks to podman's socket;
# - what the .NET actions runner needs (ICU, Kerberos, OpenSSL, zlib, LTTng);
# - a `runner` user, uid 1001, in the `docker` group, with password-less sudo, as
#   on GitHub's hosted runners.
set -eu

here=$(dirname "$0")
log() { echo "base.sh: $*" >&2; }

. /etc/os-release
case "${ID:-}:${ID_LIKE:-}" in
  ubuntu:* | debian:* | *:*debian*)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Package names that changed across releases (Ubuntu 24.04: 64-bit time_t).
    newest() { apt-cache pkgnames "$1" | grep -E "^$1[0-9]*(t64)?\$" | sort -V | tail -n 1; }
    icu=$(newest libicu)
    ssl=libssl3
    apt-cache show libssl3t64 >/dev/null 2>&1 && ssl=libssl3t64
    lttng=$(newest liblttng-ust)
    apt-get install -y -q --no-install-recommends \
      ca-certificates curl gnupg git git-lfs jq python3 python3-pip python3-venv \
      nodejs npm build-essential pkg-config sudo zip unzip xz-utils zstd \
      openssh-client iproute2 iputils-ping dnsutils procps less tzdata locales \
      podman buildah skopeo fuse-overlayfs uidmap crun \
      "${icu:?no libicu package}" libkrb5-3 zlib1g "$ssl" ${lttng:+"$lttng"}
    # The docker CLI and its plugins from Docker's repository (no daemon: podman serves).
    install -m 0755 -d /etc/apt/keyrings
    curl -fsSL "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc
    chmod a+r /etc/apt/keyrings/docker.asc
    echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/$ID ${VERSION_CODENAME:?} stable" \
      >/etc/apt/sources.list.d/docker.list
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker-ce-cli docker-buildx-plugin docker-compose-plugin
    git lfs install --system
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    ;;
  fedora:*)
    dnf -y install dnf-plugins-core
    dnf -y install \
      ca-certificates curl git git-lfs jq python3 python3-pip nodejs npm gcc gcc-c++ make \
      pkgconf sudo zip unzip xz zstd openssh-clients iproute iputils bind-utils procps-ng \
      less tzdata podman buildah skopeo fuse-overlayfs crun shadow-utils \
      libicu krb5-libs openssl-libs zlib lttng-ust
    dnf config-manager addrepo --from-repofile=https://download.docker.com/linux/fedora/docker-ce.repo ||
      dnf config-manager --add-repo https://download.docker.com/linux/fedora/docker-ce.repo
    dnf -y install docker-ce-cli docker-buildx-plugin docker-compose-plugin
    git lfs install --system
    dnf clean all
    ;;
  *)
    log "unsupported distribution ${ID:-unknown} (Ubuntu, Debian and Fedora are)"
    exit 1
    ;;
esac

# docker → podman: the shim goes before the real CLI on PATH.
install -m 0755 "$here/docker.sh" /usr/local/bin/docker

getent group docker >/dev/null || groupadd --system docker
if ! getent passwd runner >/dev/null; then
  # Ubuntu images ship an `ubuntu` user with uid 1000; 1001 is GitHub's runner uid.
  useradd --create-home --uid 1001 --user-group --groups docker --shell /bin/bash runner
else
  usermod --append --groups docker runner
fi
echo 'runner ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/runner
chmod 0440 /etc/sudoers.d/runner
# Rootless podman for the runner user.
grep -q '^runner:' /etc/subuid 2>/dev/null || echo 'runner:100000:65536' >>/etc/subuid
grep -q '^runner:' /etc/subgid 2>/dev/null || echo 'runner:100000:65536' >>/etc/subgid
log "done: $(git --version), node $(node --version), $(podman --version), $(docker --version 2>/dev/null || echo 'docker CLI')"
