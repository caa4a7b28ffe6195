package initd

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// nicWait bounds the wait for the NIC once its modules are loaded (it
// appears within milliseconds of virtio_net under TCG).
const nicWait = 10 * time.Second

// bringUpLoopback sets lo up: a kernel starts it down, and without it
// 127.0.0.1 reaches nothing in the guest, NIC or not.
func bringUpLoopback() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("setting lo up: %w", err)
	}
	return nil
}

// configureNetwork loads the modules listed in modulesList (as the boot
// modules are loaded), waits up to wait for the NIC with c's MAC and
// configures it: MTU, address, up, default route. A missing list is not
// an error by itself (a kernel may have the driver built in), but it is
// named when no NIC appears.
func configureNetwork(c netConfig, modulesList string, wait time.Duration, logf func(string, ...any)) error {
	t0 := time.Now()
	_, err := os.Stat(modulesList)
	noList := errors.Is(err, fs.ErrNotExist)
	n := 0
	if !noList {
		if n, err = loadModules(modulesList); err != nil {
			return err
		}
	}
	loaded := time.Since(t0)
	link, err := waitLink(c.mac, wait)
	if err != nil {
		if noList {
			err = fmt.Errorf("%w; the initramfs has no network modules (no %s)", err, modulesList)
		}
		return err
	}
	if err := configureLink(link, c); err != nil {
		return err
	}
	via := "no default route"
	if c.gateway.IsValid() {
		via = "default route via " + c.gateway.String()
	}
	logf("network: %s (%s) is up with %s, %s, MTU %d in %v (%d modules loaded in %v)", link.Attrs().Name, c.mac,
		c.addr, via, c.mtu, time.Since(t0).Round(time.Millisecond), n, loaded.Round(time.Millisecond))
	return nil
}

// waitLink waits up to wait for the network interface with MAC mac.
func waitLink(mac net.HardwareAddr, wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing the network interfaces: %w", err)
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, mac) {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			var have []string
			for _, l := range links {
				have = append(have, l.Attrs().Name+" "+l.Attrs().HardwareAddr.String())
			}
			return nil, fmt.Errorf("no network interface with MAC %s after %v (there are: %s)", mac, wait, strings.Join(have, ", "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// configureLink gives l c's MTU and address, sets it up and routes by
// default via c's gateway. It replaces rather than adds, so that it can
// run again on a configured link.
func configureLink(l netlink.Link, c netConfig) error {
	name := l.Attrs().Name
	if err := netlink.LinkSetMTU(l, c.mtu); err != nil {
		return fmt.Errorf("setting the MTU of %s to %d: %w", name, c.mtu, err)
	}
	ip := c.addr.Addr()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(c.addr.Bits(), ip.BitLen())}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("adding %s to %s: %w", c.addr, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	if c.gateway.IsValid() {
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: c.gateway.AsSlice()}); err != nil {
			return fmt.Errorf("adding the default route via %s on %s: %w", c.gateway, name, err)
		}
	}
	return nil
}
