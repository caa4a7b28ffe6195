// Package images tests the container images `make images` writes
// (hack/images): it builds both OCI image tarballs through the same builder
// into a temporary directory, reads them back with go-containerregistry as
// both an OCI layout and a docker-load archive, checks their configs
// (entrypoint, user, labels), flattens each image's layers (whiteouts
// honoured) and runs the binaries from the result: the manager's static
// binary directly, and QEMU, mkfs.ext4 and the node agent from the
// node-agent rootfs under chroot, so that they load the image's own
// libraries rather than the host's.
package images
