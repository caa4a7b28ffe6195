#!/usr/bin/env bash
# Installs what building and testing sandbox-operator needs on a Debian 12
# machine, idempotently: git, make and gcc; QEMU (qemu-system-x86, for the
# microVMs under TCG or KVM), e2fsprogs (mkfs.ext4 -d builds root disks),
# lz4 (unpacks the guest kernel's vmlinux) and kmod (depmod for the guest
# kernel's modules.dep), busybox-static (the tests build their guest images
# from its static binary, with no registry on the internet). Go is expected at /usr/local/go; the control plane
# is built from Go modules by hack/build-control-plane.sh and the guest
# kernel is unpacked from Debian's package by hack/setup-guest-kernel.sh.
#
# As root, the missing packages are installed with one `apt-get update` and
# one `apt-get install`; otherwise the script names them and fails. Nothing
# is touched when everything is present.
set -euo pipefail
# command → Debian package providing it.
declare -A pkg_of=(
  [git]=git [make]=make [gcc]=build-essential
  [qemu-system-x86_64]=qemu-system-x86 [mkfs.ext4]=e2fsprogs [lz4]=lz4 [depmod]=kmod
)
pkgs=()
for cmd in git make gcc qemu-system-x86_64 mkfs.ext4 lz4 depmod; do
  # depmod and mkfs.ext4 live in /usr/sbin, which a non-root PATH may lack.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || pkgs+=("${pkg_of[$cmd]}")
done
# Debian's plain busybox package is dynamically linked: ask for the static one.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || pkgs+=(busybox-static)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${pkgs[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  else
    echo "setup: missing packages ${pkgs[*]}; install them (apt-get install ${pkgs[*]})" >&2; exit 1
  fi
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go 1.26 is required (expected at /usr/local/go/bin/go)" >&2; exit 1; }
