#!/usr/bin/env bash
# Builds the project's two OCI images without a Docker engine (`make images`):
#
#   bin/images/manager.tar      the static manager on an empty base (CA
#                               certificates, /etc/passwd with nonroot 65532)
#   bin/images/node-agent.tar   a trimmed Debian bookworm minbase rootfs with
#                               QEMU and e2fsprogs, plus the guest kernel, its
#                               (trimmed) modules, sandbox-init and node-agent
#
# Each tarball is an OCI image layout (index.json, oci-layout, blobs/) that
# also carries Docker's manifest.json, so `docker load`, `podman load`,
# `skopeo copy oci-archive:…`, `ctr import` and `kind load image-archive`
# all read it. images/*.Dockerfile describe the same images for an engine.
#
# The Debian rootfs comes from debootstrap (installed here when missing, as
# root) against the machine's own apt mirror, and is cached by its package set
# under $SANDBOX_CACHE/images/, so later runs and CI only re-pack the project's
# binaries. The layering (base, guest kernel, binaries) and the image configs
# are written by hack/images/main.go with go-containerregistry.
#
# Needs: root (debootstrap chroots), bin/sandbox-init (make build) and
# bin/guest (make guest-kernel). IMAGE_REPOSITORY (default sandbox-operator)
# and IMAGE_TAG (default: the binaries' version) name the images;
# IMAGES_OUT (default bin/images) is where they go.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin:/sbin"

OUT=${IMAGES_OUT:-bin/images}
CACHE_ROOT="${SANDBOX_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/sandbox-operator}"
SUITE=bookworm
# What the agent runs besides itself: QEMU (the microvm machine), e2fsprogs
# (mkfs.ext4 -d, e2fsck, debugfs for root disks) and CA certificates (image
# pulls over TLS). Everything else comes from minbase.
PACKAGES=qemu-system-x86,e2fsprogs,ca-certificates
# The mirror the machine's apt uses (deb822 or one-line sources), so the
# build works wherever apt-get does; IMAGES_MIRROR overrides it.
mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 ~ / bookworm / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=${IMAGES_MIRROR:-$(mirror)}
KEY=$(printf '%s\n' "$SUITE" minbase "$PACKAGES" | sha256sum | cut -c1-16)
CACHED="${CACHE_ROOT}/images/rootfs-${SUITE}-${KEY}"
# Bump TRIM when trim() changes: a cached rootfs is trimmed again in place
# (no new debootstrap) and its cached layer dropped.
TRIM=trim-v2
STAMP="rootfs ${SUITE} minbase ${PACKAGES}"

[ -f bin/sandbox-init ] || { echo "images: bin/sandbox-init is missing (make build)" >&2; exit 1; }
[ -f bin/guest/vmlinux ] && [ -f bin/guest/modules/modules.dep ] || { echo "images: bin/guest is missing (make guest-kernel)" >&2; exit 1; }

# trim removes what the agent's container never reads. The dpkg database
# stays, so scanners can still list the image's packages.
trim() {
  local r=$1
  # Docs, man pages, locales, apt's lists and caches, logs, leftovers.
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
    "$r"/usr/share/lintian "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* \
    "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/log/* "$r"/debootstrap \
    "$r"/tmp/* "$r"/var/tmp/* "$r"/run/* "$r"/dev/* "$r"/proc/* "$r"/sys/*
  # QEMU beyond qemu-system-x86_64: the 32-bit system emulator (18 MiB) and
  # the firmware of other architectures (qemu-system-data is shared by all).
  # The microvm machine boots with qboot (bios-microvm.bin) and the PVH entry.
  rm -rf "$r"/usr/libexec/qemu-system-i386 "$r"/usr/share/qemu/openbios-* "$r"/usr/share/qemu/skiboot.lid \
    "$r"/usr/share/qemu/slof.bin "$r"/usr/share/qemu/s390-* "$r"/usr/share/qemu/palcode-* \
    "$r"/usr/share/qemu/hppa-firmware.img "$r"/usr/share/qemu/opensbi-* "$r"/usr/share/qemu/*.dtb \
    "$r"/usr/share/qemu/QEMU,*.bin "$r"/usr/share/qemu/npcm7xx_bootrom.bin "$r"/usr/share/qemu/vof.bin
  # The container runtime writes these.
  : >"$r"/etc/hostname
  : >"$r"/etc/resolv.conf
}

if [ "$(cat "$CACHED/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  [ "$(id -u)" = 0 ] || { echo "images: debootstrap needs root to build the node-agent rootfs (cached afterwards in $CACHED)" >&2; exit 1; }
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "images: installing debootstrap" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  echo "images: debootstrap ${SUITE} minbase + ${PACKAGES} from ${MIRROR} into ${CACHED} (minutes, once)" >&2
  mkdir -p "${CACHE_ROOT}/images"
  tmp=$(mktemp -d "${CACHED}.XXXX")
  trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/rootfs" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  rm -f "$tmp/debootstrap.log"
  echo "$STAMP" >"$tmp/.stamp"
  rm -rf "$CACHED" && mv "$tmp" "$CACHED"
  trap - EXIT
fi
if [ "$(cat "$CACHED/.trim" 2>/dev/null)" != "$TRIM" ]; then
  trim "$CACHED/rootfs"
  rm -f "$CACHED"/layer-*.tar.gz
  echo "$TRIM" >"$CACHED/.trim"
fi

# The binaries of the images: static, with the VCS revision stamped in
# (node-agent --version and manager --version print it; the labels say the
# same). CGO_ENABLED=0 keeps them independent of the base's libc.
mkdir -p "$OUT/bin"
for cmd in manager node-agent; do
  CGO_ENABLED=0 go build -buildvcs=auto -trimpath -ldflags='-s -w' -o "$OUT/bin/$cmd" "./cmd/$cmd"
done

go run ./hack/images \
  -out "$OUT" \
  -rootfs "$CACHED/rootfs" \
  -layer-cache "${CACHE_ROOT}/images" \
  -manager "$OUT/bin/manager" \
  -node-agent "$OUT/bin/node-agent" \
  -sandbox-init bin/sandbox-init \
  -guest bin/guest \
  -repository "${IMAGE_REPOSITORY:-sandbox-operator}" \
  -tag "${IMAGE_TAG:-}" \
  -revision "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -created "${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
