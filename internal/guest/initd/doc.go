// Package initd is sandbox-init, the guest agent that runs as PID 1 in every
// microVM: it mounts the kernel filesystems, loads the modules the
// initramfs lists, opens its virtio-serial port (named on the kernel command
// line with agent.port=NAME), greets the node agent with protocol.Hello and
// serves its requests until it is told to shut down.
//
// Meanwhile it assembles the workload's root at /mnt/root: the image's disk
// (virtio-blk serial "root", ext4, read-only) under an overlay whose
// writable layer is the disk named by sandbox.upper= (ext4, kept across
// boots) or a tmpfs (sandbox.upper_mib= sizes it). Disks are found by
// serial in /sys/block, never by their order.
//
// On protocol.TypeStart it configures the root (mounts, host name, scripts,
// patches, in that order), then starts the main process through its exec
// helper (sandbox-init re-executed: see exec_linux.go), which applies the
// rlimits, chroots, changes user and execs the program, with its output on
// the console; with Start.Init it hands off to an init system as PID 1 of
// its own PID namespace. It reports the end with protocol.TypeExit; the VM
// keeps running: the host decides. A Start that cannot be applied fails as
// a whole (TypeError, then an Exit with code 127): a half-configured
// sandbox does not run.
//
// The node agent may restart while the VM runs: Session says Hello again to
// each new connection, with the main process's state, and sends heartbeats.
//
// Not yet: orphaned processes are not reaped (a wait4(-1) reaper would
// steal the main process's status from os/exec), exec sessions are
// refused, and the main process's output only goes to the console.
//
// PID 1 must never exit (the kernel would panic), so every fatal error is
// logged to the console and ends in a power-off: the host sees QEMU exit
// and reads the reason in the console log.
package initd
