// Package vmm starts and controls the virtual machine monitor behind a
// sandbox. VMM is the seam for other monitors (Cloud Hypervisor,
// Firecracker); QEMU is the first, on its microvm machine, following the
// recipe measured in the project's microVM feasibility report: the
// uncompressed kernel booted through PVH, an uncompressed initramfs, the
// guest agent on a virtio-serial port whose socket the host listens on
// before QEMU starts, and tsc_early_khz under TCG.
//
// The monitor runs detached (its own session, output to files, stdin
// /dev/null) so that it can outlive the node agent; its pid and process
// start time are recorded so that a restarted agent can tell the same
// process from a recycled pid.
//
// A VM may have one NIC (Config.Network): a virtio-net device whose
// frames QEMU carries over a unix stream socket it listens on
// (NetworkDevice says why QEMU is the server), for a userspace network
// stack on the host to connect to (VM.DialNet).
package vmm
