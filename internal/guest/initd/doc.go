// Package initd is sandbox-init, the guest agent that runs as PID 1 in every
// microVM: it mounts the kernel filesystems, loads the modules the
// initramfs lists, opens its virtio-serial port (named on the kernel command
// line with agent.port=NAME), greets the node agent with protocol.Hello and
// serves its requests until it is told to shut down. Meanwhile it mounts the
// image's disk (/dev/vda, read-only) under a tmpfs-backed overlay at
// /mnt/root; on protocol.TypeStart it runs the sandbox's main process
// chrooted there, with its output on the console, and reports its end with
// protocol.TypeExit (the VM keeps running: the host decides).
//
// Not yet: orphaned processes are not reaped, the main process runs as
// root, and its output only goes to the console.
//
// PID 1 must never exit (the kernel would panic), so every fatal error is
// logged to the console and ends in a power-off: the host sees QEMU exit
// and reads the reason in the console log.
package initd
