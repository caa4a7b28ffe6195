// Package initd is sandbox-init, the guest agent that runs as PID 1 in every
// microVM: it mounts the kernel filesystems, loads the modules the
// initramfs lists, opens its virtio-serial port (named on the kernel command
// line with agent.port=NAME), greets the node agent with protocol.Hello and
// serves its requests until it is told to shut down.
//
// PID 1 must never exit (the kernel would panic), so every fatal error is
// logged to the console and ends in a power-off: the host sees QEMU exit
// and reads the reason in the console log.
package initd
