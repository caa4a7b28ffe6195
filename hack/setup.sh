#!/usr/bin/env bash
# Installs what building and testing sandbox-operator needs on a Debian 12
# machine, idempotently. Today that is Go (expected at /usr/local/go), git
# and make; the control plane is built from Go modules by
# hack/build-control-plane.sh. (The node agent's QEMU, kernel and e2fsprogs
# join this list with the node agent.)
set -euo pipefail
missing=()
for cmd in git make gcc; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=()
  for m in "${missing[@]}"; do case $m in gcc) pkgs+=(build-essential) ;; *) pkgs+=("$m") ;; esac; done
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
  else
    echo "setup: missing ${missing[*]}; install them (apt-get install ${pkgs[*]})" >&2; exit 1
  fi
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go 1.26 is required (expected at /usr/local/go/bin/go)" >&2; exit 1; }
