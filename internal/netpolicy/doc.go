// Package netpolicy is the egress policy of a sandbox's userspace network:
// it decides, for every flow the guest opens, whether the node's network
// stack may re-originate it from a host socket (issue 5, "Networking";
// microsandbox's NetworkPolicy, research/microsandbox.md §1.7 and §4).
//
// It is pure and has no I/O. Compile turns a Sandbox's spec.network into an
// immutable Policy; the stack then asks it three questions:
//
//   - Decide: may this flow (protocol, destination, and the DNS names known
//     to have resolved to the destination) go out? Rules are matched in
//     order and the first match wins; defaultEgress (Deny unless set)
//     applies when none does. Without a policy the "public" profile applies:
//     public addresses only, on any protocol and port.
//   - AllowName: may the resolver answer a query for this name at all? A
//     Deny domain rule makes it NXDOMAIN.
//   - FilterAnswer: DNS rebinding protection, dropping answers that point a
//     name at a non-public address no Allow rule covers.
//
// Destinations are judged by group. The groups partition the address space
// and the more dangerous group wins: the node's own addresses are Host, not
// Private or Public; 169.254.169.254 is Metadata, not LinkLocal. So allowing
// Private or LinkLocal never quietly allows the node or the metadata
// service; each must be allowed by name. Special-purpose ranges that are in
// no group (broadcast, unspecified, documentation, benchmarking, 240/4) are
// reached only through a cidr rule.
//
// Domain rules only see names the stack learned itself: the resolver
// records the answers it served in Names (only the addresses FilterAnswer
// kept), and the stack passes Names.Lookup(dst) in Flow.Names. A name the
// guest merely claims (SNI, Host header) must not be passed, or an Allow
// domain rule would open every address. The trade-off: a guest that uses an
// address it did not resolve through the stack, or after its answer expired
// in Names, is judged by the address alone.
//
// Denials keeps counters by decision class and a ring of recent denials for
// the Sandbox's status and the node agent's metrics.
package netpolicy
