# syntax=docker/dockerfile:1
# The node-agent image, for people with a Docker engine (or BuildKit):
#
#   docker build -f images/node-agent.Dockerfile -t <registry>/sandbox-operator/node-agent:<tag> \
#     --build-arg VERSION=<tag> --build-arg REVISION=$(git rev-parse HEAD) .
#
# `make images` builds the same image without an engine (hack/images:
# bin/images/node-agent.tar, an OCI layout archive, from a debootstrap
# minbase rootfs instead of bookworm-slim). What the agent needs on a node
# (docs/node-agent.md): QEMU (qemu-system-x86, ≥ 7.2 for the microvm
# machine), e2fsprogs (mkfs.ext4 -d, e2fsck, debugfs for root disks), the
# guest kernel (vmlinux) and its modules, and the static sandbox-init that
# the agent packs into the guests' initramfs. The paths below are the chart's
# nodeAgent.guest defaults and the entrypoint's.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/node-agent ./cmd/node-agent && \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/sandbox-init ./cmd/sandbox-init

# The guest kernel as `make guest-kernel` unpacks it: Debian's cloud kernel,
# decompressed to the ELF vmlinux, with modules.dep. (hack/images keeps only
# the modules the initramfs packs; this stage ships the whole directory.)
FROM debian:bookworm-slim AS kernel
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends lz4 kmod
COPY hack/setup-guest-kernel.sh /src/hack/setup-guest-kernel.sh
RUN cd /src && SANDBOX_CACHE=/cache hack/setup-guest-kernel.sh && \
    mkdir -p /out && cp -L bin/guest/vmlinux /out/vmlinux && cp -rL bin/guest/modules /out/modules

FROM debian:bookworm-slim
ARG VERSION=devel
ARG REVISION=unknown
# QEMU beyond qemu-system-x86_64 (the 32-bit emulator) and the docs go, as
# in hack/images/build.sh's trim.
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-system-x86 e2fsprogs ca-certificates && \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* /usr/libexec/qemu-system-i386
COPY --from=kernel /out/ /opt/sandbox-operator/
COPY --from=build /out/sandbox-init /opt/sandbox-operator/sandbox-init
COPY --from=build /out/node-agent /usr/local/bin/node-agent
LABEL org.opencontainers.image.title="sandbox-operator node-agent" \
      org.opencontainers.image.description="Runs the Sandboxes placed on its node as QEMU microVMs." \
      org.opencontainers.image.source="https://github.com/microvm-dev/sandbox-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# Root: the agent opens /dev/kvm, creates cgroups and mounts; the chart runs
# it privileged (docs/install.md).
USER 0:0
WORKDIR /
ENTRYPOINT ["/usr/local/bin/node-agent", \
  "--kernel=/opt/sandbox-operator/vmlinux", \
  "--guest-modules=/opt/sandbox-operator/modules", \
  "--sandbox-init=/opt/sandbox-operator/sandbox-init", \
  "--qemu=/usr/bin/qemu-system-x86_64"]
