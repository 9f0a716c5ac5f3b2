#!/usr/bin/env bash
# Keep the Containerfile's actions runner pin current: GitHub refuses deprecated
# runner versions. Reads the latest release of actions/runner (with `gh api`, or
# from the JSON file RELEASE_JSON), takes the linux-x64 and linux-arm64 SHA-256
# checksums from its notes, and rewrites RUNNER_VERSION, RUNNER_SHA256_X64 and
# RUNNER_SHA256_ARM64 in the Containerfile (CONTAINERFILE overrides the path).
# Prints the new version when it changed the pin, nothing when it was current.
set -euo pipefail
cd "$(dirname "$0")/.."

file=${CONTAINERFILE:-Containerfile}
if [ -n "${RELEASE_JSON:-}" ]; then
  release=$(cat "$RELEASE_JSON")
else
  release=$(gh api repos/actions/runner/releases/latest)
fi

tag=$(jq -r '.tag_name // empty' <<<"$release")
body=$(jq -r '.body // empty' <<<"$release")
version=${tag#v}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
  echo "update-runner-pin: unexpected release tag ${tag:-<none>}" >&2
  exit 1
}
sha_for() {
  # The release notes carry `<!-- BEGIN SHA linux-x64 -->HEX<!-- END SHA linux-x64 -->`.
  { grep -oE "<!-- BEGIN SHA $1 -->[0-9a-f]{64}<!-- END SHA $1 -->" <<<"$body" || true; } |
    head -n1 | sed -E 's/.*-->([0-9a-f]{64})<!--.*/\1/'
}
x64=$(sha_for linux-x64)
arm64=$(sha_for linux-arm64)
if [ -z "$x64" ] || [ -z "$arm64" ]; then
  echo "update-runner-pin: no linux-x64/linux-arm64 checksums in the notes of $tag" >&2
  exit 1
fi

current=$(sed -nE 's/^ARG RUNNER_VERSION=(.*)$/\1/p' "$file")
[ -n "$current" ] || {
  echo "update-runner-pin: no ARG RUNNER_VERSION= in $file" >&2
  exit 1
}
if [ "$current" = "$version" ]; then
  exit 0
fi
newest=$(printf '%s\n%s\n' "$current" "$version" | sort -V | tail -n1)
if [ "$newest" != "$version" ]; then
  echo "update-runner-pin: the latest release $version is older than the pin $current; left alone" >&2
  exit 0
fi
sed -i -E \
  -e "s/^ARG RUNNER_VERSION=.*/ARG RUNNER_VERSION=$version/" \
  -e "s/^ARG RUNNER_SHA256_X64=.*/ARG RUNNER_SHA256_X64=$x64/" \
  -e "s/^ARG RUNNER_SHA256_ARM64=.*/ARG RUNNER_SHA256_ARM64=$arm64/" \
  "$file"
echo "$version"
