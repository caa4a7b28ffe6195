// Command images writes the project's two container images as OCI image
// layout tarballs, without a Docker engine: bin/images/manager.tar and
// bin/images/node-agent.tar. hack/images/build.sh (`make images`) prepares
// its inputs — the static binaries and the cached Debian rootfs from
// debootstrap — and runs it; images/*.Dockerfile describe the same images for
// people with an engine.
//
// Layers are ordered from the least to the most often changed, so that a
// registry keeps the big ones across releases:
//
//	manager:    base (CA certificates, passwd/group with nonroot 65532, /tmp), /manager
//	node-agent: Debian rootfs (QEMU, e2fsprogs), guest kernel + modules, node-agent + sandbox-init
//
// The Debian and guest-kernel layers are compressed once and cached next to
// their inputs; a warm build only compresses the binaries. File times are
// clamped to -created (SOURCE_DATE_EPOCH or the commit's time), owners and
// modes come from the inputs, and the host's user names never leak in, so the
// same inputs give the same layer digests.
package main
