#!/usr/bin/env bash
# Proves that `make verify` catches stale generated code: in a throwaway
# worktree of HEAD, change the documentation of an API field without
# regenerating, and expect `make verify` to fail; then expect it to pass on
# the untouched tree.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
wt=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$wt" >/dev/null 2>&1 || rm -rf "$wt"' EXIT
git worktree add --detach "$wt" HEAD >/dev/null 2>&1
cd "$wt"

if ! make -s verify BIN="$root/bin" >/tmp/test-verify-clean.log 2>&1; then
  echo "test-verify: make verify failed on an untouched checkout of HEAD:" >&2
  cat /tmp/test-verify-clean.log >&2
  exit 1
fi

sed -i 's|// cpus is the number of virtual CPUs, 1 to 64. Default 1.|// cpus is the number of virtual CPUs (stale doc).|' api/v1alpha1/sandbox_types.go
git diff --quiet && { echo "test-verify: the edit did not apply" >&2; exit 1; }
git commit -qam "stale docs" --no-verify
if make -s verify BIN="$root/bin" >/tmp/test-verify-stale.log 2>&1; then
  echo "test-verify: make verify passed although the CRD is stale" >&2
  exit 1
fi
grep -q "out of date" /tmp/test-verify-stale.log || { cat /tmp/test-verify-stale.log >&2; exit 1; }
echo "test-verify: make verify passes on HEAD and fails on a stale CRD"
