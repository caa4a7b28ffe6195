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
// lo is set up at boot. With Start.Network, the NIC is configured while the
// root is: the network modules the initramfs packs apart
// (initramfs.NetworkModulesLoadPath) are loaded, the NIC is found by its
// MAC and gets its MTU, address and default route over netlink
// (network_linux.go), and /etc/resolv.conf in the root is replaced.
//
// On protocol.TypeStart it configures the root (mounts, host name,
// resolv.conf, scripts, patches, in that order), then starts the main
// process through its exec helper (sandbox-init re-executed: see
// exec_linux.go), which applies the
// rlimits, chroots, changes user and execs the program, with its output on
// the console and on protocol.MainOutputStream (buffered, never blocking
// the workload: mainout.go); with Start.Init it hands off to an init system as PID 1 of
// its own PID namespace. It reports the end with protocol.TypeExit; the VM
// keeps running: the host decides. A Start that cannot be applied fails as
// a whole (TypeError, then an Exit with code 127): a half-configured
// sandbox does not run.
//
// The node agent may restart while the VM runs: Session says Hello again to
// each new connection, with the main process's state, and sends heartbeats
// (with the guest's metrics: metrics.go).
//
// Exec sessions (protocol.TypeExec) start through the same exec helper, so
// the user, rlimits, root, environment and working directory apply exactly
// as for the main process (the Start's are the defaults), on pipes or on a
// pty (/dev/pts is mounted at boot and bound into the root with /dev).
// File operations (protocol.TypeFile) run in the file helper, the same
// binary chrooted into the root with the request's user's credentials, so
// that permissions and symbolic links behave as for the sandbox's own
// processes (file_linux.go). Both kinds of session belong to the
// connection that opened them and are killed when it goes (streams.go).
// After protocol.TypeDrain, new exec sessions and file operations that
// write are refused with protocol.ErrDraining; running ones go on.
//
// Decisions where the protocol is silent, each documented where it is
// made: FlagEnd on a tty's stdin sends ^D (a pty has no other EOF); an
// unknown signal name is a TypeError on the stream that does not end it;
// the protocol has no flow control, so a session's input is queued in a
// bounded inbox and its output read only as fast as the port takes it;
// an exec's missing working directory is Invalid (the main process's is
// created); exists does not follow a final symlink; copy's Dest is the
// copy itself (a directory is merged into an existing one); file
// operations do not get the sandbox's rlimits; an exec under an init
// hand-off runs in the guest's PID namespace, chrooted into the root.
//
// Not yet: orphaned processes are not reaped (a wait4(-1) reaper would
// steal the main process's status from os/exec); an exec session's end
// waits for its output pipes to close, so a background process that keeps
// them open keeps the session open (as docker exec does).
//
// PID 1 must never exit (the kernel would panic), so every fatal error is
// logged to the console and ends in a power-off: the host sees QEMU exit
// and reads the reason in the console log.
package initd
