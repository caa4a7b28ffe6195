#!/usr/bin/env bash
# Unpacks the guest kernel for the microVMs into bin/guest/, idempotently:
#
#   bin/guest/vmlinux   the uncompressed ELF kernel (booted through QEMU's PVH
#                       entry: no in-guest decompression, ~0.35 s faster
#                       under TCG than the bzImage)
#   bin/guest/modules   its modules directory (lib/modules/<version>, with
#                       modules.dep), from which the initramfs takes the
#                       virtio drivers
#   bin/guest/version   the kernel release, e.g. 6.1.0-56-cloud-amd64
#
# The kernel is Debian's cloud kernel: the exact linux-image-<abi>-cloud-amd64
# that the metapackage linux-image-cloud-amd64 depends on, fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` into
# $SANDBOX_CACHE/guest-kernel-<version>/ — the host's /boot and /lib/modules
# are never touched. The cache survives fresh clones; bin/guest/ links into it.
# Needs apt-get, dpkg-deb, lz4 and depmod (hack/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

DEST=bin/guest
CACHE_ROOT="${SANDBOX_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/sandbox-operator}"

# Resolve the ABI package the metapackage points at (a glob would fetch every
# ABI in the archive). apt-cache answers from the local lists; refresh them
# once if they do not know the metapackage yet (a fresh CI machine).
resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}'; }
PKG=$(resolve || true)
if [ -z "$PKG" ] && [ "$(id -u)" = 0 ]; then apt-get update -qq; PKG=$(resolve || true); fi
[ -n "$PKG" ] || { echo "setup-guest-kernel: apt-cache does not know linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
KVER=${PKG#linux-image-}
STAMP="guest-kernel ${PKG} extract-v1"
CACHE="${CACHE_ROOT}/guest-kernel-${KVER}"

ready() { [ -f "$1/vmlinux" ] && [ -f "$1/modules/modules.dep" ] && [ "$(cat "$1/.stamp" 2>/dev/null)" = "$STAMP" ]; }

if ready "$DEST"; then exit 0; fi
if ! ready "$CACHE"; then
  echo "Unpacking guest kernel ${PKG} into ${CACHE}" >&2
  mkdir -p "$CACHE_ROOT"
  tmp=$(mktemp -d "${CACHE}.XXXX")
  trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp" # apt-get download drops to the _apt user when it can write there
  (cd "$tmp" && apt-get download -q "$PKG" >/dev/null)
  dpkg-deb -x "$tmp"/"${PKG}"_*.deb "$tmp/root"
  vmlinuz="$tmp/root/boot/vmlinuz-${KVER}"
  # The cloud kernel's bzImage carries an LZ4 legacy-frame payload (magic
  # 02 21 4C 18); everything from the magic on decompresses to the ELF. lz4
  # stops at the end of the frame; what follows it in the bzImage is ignored.
  off=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -1 | cut -d: -f1)
  [ -n "$off" ] || { echo "setup-guest-kernel: no LZ4 payload in $vmlinuz" >&2; exit 1; }
  tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc >"$tmp/vmlinux" 2>"$tmp/lz4.err" || true
  [ "$(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
    { echo "setup-guest-kernel: the LZ4 payload of $vmlinuz is not an ELF kernel:" >&2; cat "$tmp/lz4.err" >&2; exit 1; }
  # Debian 12 ships modules under /lib/modules; newer releases under /usr/lib.
  moddir=
  for d in "$tmp/root/lib/modules/$KVER" "$tmp/root/usr/lib/modules/$KVER"; do [ -d "$d" ] && moddir=$d && break; done
  [ -n "$moddir" ] || { echo "setup-guest-kernel: no modules directory in ${PKG}" >&2; exit 1; }
  # The package ships no modules.dep (the postinst would run depmod): write it.
  [ -f "$moddir/modules.dep" ] || depmod -b "${moddir%/lib/modules/$KVER}" "$KVER"
  mv "$moddir" "$tmp/modules"
  echo "$KVER" >"$tmp/version"
  rm -rf "$tmp/root" "$tmp"/*.deb "$tmp/lz4.err"
  echo "$STAMP" >"$tmp/.stamp"
  rm -rf "$CACHE" && mv "$tmp" "$CACHE"
  trap - EXIT
fi
mkdir -p "$DEST"
ln -sfn "$CACHE/vmlinux" "$DEST/vmlinux"
ln -sfn "$CACHE/modules" "$DEST/modules"
cp -f "$CACHE/version" "$DEST/version"
cp -f "$CACHE/.stamp" "$DEST/.stamp"
echo "guest kernel ${KVER} ready in ${DEST}" >&2
