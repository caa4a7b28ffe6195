package initd

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// defaultMTU is the NIC's MTU when protocol.Network.MTU is 0.
const defaultMTU = 1500

// minMTU and maxMTU bound protocol.Network.MTU: IPv4's minimum
// (RFC 791) and the kernel's ETH_MAX_MTU, the largest virtio_net takes
// from a device that announces no MTU of its own (QEMU's stream netdev).
const (
	minMTU = 68
	maxMTU = 65535
)

// netConfig is a protocol.Network checked and parsed, ready to apply.
type netConfig struct {
	mac     net.HardwareAddr
	addr    netip.Prefix
	gateway netip.Addr // invalid: no default route
	mtu     int
}

// parseNetwork validates n before anything is applied, so that a bad
// configuration fails the Start without touching the guest.
func parseNetwork(n protocol.Network) (netConfig, error) {
	var c netConfig
	mac, err := net.ParseMAC(n.MAC)
	if err != nil || len(mac) != 6 {
		return c, fmt.Errorf("MAC %q: want six colon-separated hex bytes", n.MAC)
	}
	c.mac = mac
	if c.addr, err = netip.ParsePrefix(n.Address); err != nil {
		return c, fmt.Errorf("address %q: want an address with its prefix length, e.g. 10.0.2.15/24", n.Address)
	}
	if n.Gateway != "" {
		if c.gateway, err = netip.ParseAddr(n.Gateway); err != nil {
			return c, fmt.Errorf("gateway %q: not an IP address", n.Gateway)
		}
		if c.gateway.Is4() != c.addr.Addr().Is4() {
			return c, fmt.Errorf("gateway %s and address %s are of different IP versions", n.Gateway, n.Address)
		}
	}
	c.mtu = n.MTU
	if c.mtu == 0 {
		c.mtu = defaultMTU
	}
	if c.mtu < minMTU || c.mtu > maxMTU {
		return c, fmt.Errorf("MTU %d: must be %d to %d", n.MTU, minMTU, maxMTU)
	}
	if _, err := resolvConf(n); err != nil {
		return c, err
	}
	return c, nil
}

// resolvConf is the /etc/resolv.conf of n: its name servers and search
// domains, nothing of the image's (its servers would not be reachable).
func resolvConf(n protocol.Network) ([]byte, error) {
	var b strings.Builder
	b.WriteString("# Written by sandbox-init from the sandbox's network configuration.\n")
	for _, s := range n.Nameservers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("name server %q: not an IP address", s)
		}
		b.WriteString("nameserver " + a.String() + "\n")
	}
	if len(n.Search) > 0 {
		for _, d := range n.Search {
			if d == "" || len(d) > 253 || strings.ContainsFunc(d, func(r rune) bool { return r <= ' ' || r == '#' || r == ';' || r > '~' }) {
				return nil, fmt.Errorf("search domain %q: want a DNS name", d)
			}
		}
		b.WriteString("search " + strings.Join(n.Search, " ") + "\n")
	}
	return []byte(b.String()), nil
}

// WriteResolvConf writes n's /etc/resolv.conf into root, replacing what
// the image has there: a file, or a symbolic link (often one into /run,
// which would lead the write out of the root or nowhere), which is
// replaced rather than followed.
func WriteResolvConf(root string, n protocol.Network) error {
	content, err := resolvConf(n)
	if err != nil {
		return err
	}
	if _, err := mkdirAllInRoot(root, "/etc", defaultDirMode); err != nil {
		return err
	}
	name, err := resolveInRoot(root, "/etc/resolv.conf", false)
	if err != nil {
		return err
	}
	if err := replaceFile(name, content, defaultFileMode); err != nil {
		return fmt.Errorf("writing /etc/resolv.conf: %w", err)
	}
	return nil
}
