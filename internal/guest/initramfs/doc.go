// Package initramfs builds the guest's initramfs: an uncompressed newc cpio
// archive holding sandbox-init as /init, the two device nodes the kernel
// needs before devtmpfs is mounted (dev/console, dev/null), and the kernel
// modules the guest must load before it can reach its agent port, plus
// those it loads only for a Start with a network (NetworkModules), listed
// apart in NetworkModulesLoadPath.
//
// The archive is uncompressed on purpose: under TCG, unpacking a gzip
// initramfs in the guest costs more than reading the larger file does on the
// host. The writer is our own (newc is a 110-byte ASCII header per entry)
// rather than u-root's pkg/cpio, whose module pulls in a large dependency
// tree for the 80 lines needed here.
package initramfs
