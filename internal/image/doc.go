// Package image turns OCI image references into the read-only root
// filesystems that sandboxes boot from (DESIGN §5).
//
// A Cache, rooted at a directory on the node (<state-dir>/images), resolves a
// reference to the digest of its linux/amd64 image manifest, pulls the
// layers with go-containerregistry, flattens them with mutate.Extract
// (whiteouts and opaque directories applied) into a scratch directory, and
// packs that directory into an ext4 file with `mkfs.ext4 -d`. The result is
// kept by manifest digest and shared by every sandbox that uses it:
//
//	<root>/sha256/<hex>/rootfs.ext4   the flattened image, read-only in the guest
//	<root>/sha256/<hex>/config.json   the image's OCI config, verbatim
//	<root>/refs/<hash of reference>   the digest a tag (or index digest) last resolved to
//	<root>/tmp/                       work in progress, emptied by New
//
// An entry appears by an atomic rename of a complete directory, so a reader
// never sees half an image, and a crash mid-pull leaves only scratch space
// that the next New removes.
//
// The package knows nothing of Kubernetes: the node agent reads the
// Sandbox's imagePullSecrets and CA bundle and passes their bytes in
// PullOptions. Errors wrap the sentinels in errors.go so that the agent can
// tell "not found" and "unauthorized" from transport failures and still show
// the registry's own message in the ImageReady condition.
//
// Extraction writes through an os.Root, so no tar entry or symlink can make
// it write outside the scratch directory. It must run as root: mkfs.ext4 -d
// copies ownership from the extracted files, and only root can chown them.
package image
