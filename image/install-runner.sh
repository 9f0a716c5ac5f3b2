#!/bin/sh
# Runs inside the Containerfile's build: installs the actions runner under
# /opt/gh-runner-microvm/share/runner/runner-<version>/ (design.md §7), owned by
# the `runner` user, which is created (uid 1001) if the base image has none.
#
# $1: the copied RUNNER_TARBALL, or the placeholder image/no-runner-tarball, in
# which case the pinned RUNNER_VERSION is downloaded and checked against
# RUNNER_SHA256_X64 / RUNNER_SHA256_ARM64.
set -eu

tarball=$1
prefix=/opt/gh-runner-microvm
chmod 0755 "$prefix/bin/entrypoint"

die() {
  echo "install-runner: $*" >&2
  exit 1
}

case "${TARGETARCH:-$(uname -m)}" in
  amd64 | x86_64) arch=x64 sha=${RUNNER_SHA256_X64:-} ;;
  arm64 | aarch64) arch=arm64 sha=${RUNNER_SHA256_ARM64:-} ;;
  *) die "unsupported architecture ${TARGETARCH:-$(uname -m)}" ;;
esac

if [ "${RUNNER_TARBALL:-image/no-runner-tarball}" = image/no-runner-tarball ]; then
  version=${RUNNER_VERSION:?RUNNER_VERSION is not set}
  [ -n "$sha" ] || die "no RUNNER_SHA256_* checksum for $arch runner $version"
  url=https://github.com/actions/runner/releases/download/v$version/actions-runner-linux-$arch-$version.tar.gz
  echo "install-runner: downloading $url" >&2
  curl -fsSL --retry 3 -o "$tarball" "$url" || die "cannot download $url"
else
  name=$(basename "$RUNNER_TARBALL")
  case "$name" in
    actions-runner-linux-"$arch"-*.tar.gz) ;;
    *) die "RUNNER_TARBALL $name: expected actions-runner-linux-$arch-<version>.tar.gz" ;;
  esac
  version=${name#actions-runner-linux-"$arch"-}
  version=${version%.tar.gz}
  sha=${RUNNER_TARBALL_SHA256:-}
fi
if [ -n "$sha" ]; then
  echo "$sha  $tarball" | sha256sum -c - >/dev/null || die "checksum mismatch for runner $version (expected $sha)"
fi

dest=$prefix/share/runner/runner-$version
mkdir -p "$dest"
tar -xzf "$tarball" -C "$dest" --no-same-owner || die "cannot unpack runner $version"
rm -f "$tarball"
[ -x "$dest/bin/Runner.Listener" ] || die "runner $version has no bin/Runner.Listener"

if ! grep -q '^runner:' /etc/passwd; then
  useradd --create-home --uid 1001 --user-group --shell /bin/sh runner ||
    die "cannot create the runner user (uid 1001)"
fi
# The runner writes its configuration (.runner, .credentials) and _diag into its root.
chown -R runner:runner "$dest"
echo "install-runner: actions runner $version in $dest" >&2
