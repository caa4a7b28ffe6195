# syntax=docker/dockerfile:1
# The manager image, for people with a Docker engine (or BuildKit):
#
#   docker build -f images/manager.Dockerfile -t <registry>/sandbox-operator/manager:<tag> \
#     --build-arg VERSION=<tag> --build-arg REVISION=$(git rev-parse HEAD) .
#
# `make images` builds the same image without an engine (hack/images:
# bin/images/manager.tar, an OCI layout archive): a static binary on
# distroless' static base, run as nonroot (65532). The chart runs it with a
# read-only root filesystem and no capabilities.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
# Static (no libc in the base); with .git in the context, `manager --version`
# prints the VCS version as the daemonless build's does.
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/manager ./cmd/manager

# CA certificates, /etc/passwd with nonroot, /tmp: what hack/images writes.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=devel
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sandbox-operator manager" \
      org.opencontainers.image.description="Places Sandboxes on SandboxNodes, drives their lifecycle and serves the access API." \
      org.opencontainers.image.source="https://github.com/microvm-dev/sandbox-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/manager /manager
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/manager"]
