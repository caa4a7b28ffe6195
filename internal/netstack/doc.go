// Package netstack is a sandbox's network on the node: a userspace TCP/IP
// stack (gVisor's netstack) whose only NIC is the VM's virtio-net device,
// reached through QEMU's stream netdev (a unix socket carrying each
// Ethernet frame after a 4-byte big-endian length).
//
// Every guest flow ends in this stack. TCP connections and UDP flows are
// terminated here and re-originated from host sockets only after the
// sandbox's egress policy (internal/netpolicy) allowed them; a denied TCP
// connection gets a reset, a denied UDP datagram an ICMP port unreachable,
// and both are counted with a reason. The guest sees one subnet
// (DefaultSubnet): its own address, the gateway — which stands for the node
// itself, so that the guest reaches the node's loopback services at the
// gateway address when the policy allows 127.0.0.1 — and the resolver.
//
// The resolver answers the guest's DNS queries by asking the upstream
// nameservers (the sandbox's spec.network.dns or the node's), after the
// policy's AllowName; answers pass FilterAnswer (DNS rebinding protection)
// and are remembered (netpolicy.Names), so that domain rules can decide
// flows to the addresses a name resolved to.
//
// Published ports go the other way: a host listener whose connections are
// dialled into the guest through the stack.
//
// QEMU owns the socket (server=on; QEMU 7.2 cannot reconnect as a client),
// and the node agent dials it: after an agent restart a new stack with the
// same addresses dials again, and the guest's network carries on (flows
// open at the restart are reset).
package netstack
