package initd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/vmm"
)

// netScript is the main process of the networked boot: it reports the
// NIC (found by its MAC), its address, the default route and
// /etc/resolv.conf, then pings the gateway, which the test plays.
const netScript = `
for d in /sys/class/net/*; do
  echo "netif=${d##*/} mac=$(cat $d/address) mtu=$(cat $d/mtu) flags=$(cat $d/flags)"
  [ "$(cat $d/address)" = 52:54:00:12:34:56 ] && nic=${d##*/}
done
echo "addr=$(ip -4 -o addr show dev $nic | grep -o 'inet [0-9./]*')"
echo "route=$(ip route show default)"
grep -i "^$nic" /proc/net/route | while read i dst gw rest; do echo "procroute=$dst/$gw"; done
echo "resolv=$(tr '\n' '|' < /etc/resolv.conf)"
if ping -c 1 -W 20 10.0.2.2 > /dev/null; then echo ping=ok; else echo ping=failed; fi
`

// gatewayMAC is the MAC the test answers ARP for 10.0.2.2 with.
var gatewayMAC = net.HardwareAddr{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02}

// checkNetwork boots a VM with a NIC and sends a Start with a Network:
// the guest has an interface with that MAC, address, MTU and default
// route, and /etc/resolv.conf in its root. The test dials net.sock once
// from the VM it started and once more, after closing that connection,
// from an adoption of it (a restarted node agent), and plays the gateway
// on that second connection: it answers the guest's ARP request for
// 10.0.2.2 and its ping, so frames flow both ways.
func checkNetwork(t *testing.T, kernel, initrd string, disks vmDisks) {
	g := NewWithT(t)
	vm := bootVM(t, kernel, initrd, disks, &vmm.NetworkDevice{MAC: "52:54:00:12:34:56"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := vm.DialNet(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(first.Close()).To(Succeed())
	adopted, err := vmm.QEMU{}.Adopt(filepath.Dir(vm.Paths().Process))
	g.Expect(err).NotTo(HaveOccurred())
	nc, err := adopted.DialNet(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = nc.Close() }()

	conn := dial(t, vm)
	g.Expect(readHello(t, conn).Main).To(BeNil())
	send(t, conn, protocol.TypeHelloAck, protocol.HelloAck{Version: protocol.Version})
	sent := time.Now()
	send(t, conn, protocol.TypeStart, protocol.Start{
		Argv: []string{"sh", "-c", netScript},
		Env:  []string{"PATH=/bin"},
		Network: &protocol.Network{MAC: "52:54:00:12:34:56", Address: "10.0.2.15/24", Gateway: "10.0.2.2",
			Nameservers: []string{"10.0.2.3"}, Search: []string{"sandbox.local"}, MTU: 1400},
	})
	var firstOut time.Duration
	served := make(chan error, 1)
	go func() { served <- playGateway(nc, 60*time.Second) }()
	for {
		f := readFrame(t, conn, 60*time.Second)
		if f.Stream == protocol.MainOutputStream && f.Type == protocol.TypeStdout && firstOut == 0 {
			firstOut = time.Since(sent)
		}
		if f.Type == protocol.TypeError {
			t.Fatalf("the guest reports an error: %s", f.Payload)
		}
		if f.Type == protocol.TypeExit {
			var e protocol.Exit
			g.Expect(protocol.Decode(f, &e)).To(Succeed())
			g.Expect(e).To(Equal(protocol.Exit{Code: 0}))
			break
		}
	}
	g.Expect(<-served).To(Succeed())
	console := waitConsole(t, vm, "ping=", time.Second)
	for _, want := range []string{
		"netif=lo mac=00:00:00:00:00:00 mtu=65536 flags=0x9",
		"netif=eth0 mac=52:54:00:12:34:56 mtu=1400 flags=0x1003", // IFF_UP|IFF_BROADCAST|IFF_MULTICAST
		"addr=inet 10.0.2.15/24",
		"route=default via 10.0.2.2 dev eth0",
		"procroute=00000000/0202000A",
		"resolv=# Written by sandbox-init from the sandbox's network configuration.|nameserver 10.0.2.3|search sandbox.local|",
		"ping=ok",
	} {
		g.Expect(console).To(ContainSubstring(want))
	}
	g.Expect(console).To(MatchRegexp(`network: eth0 \(52:54:00:12:34:56\) is up`))
	t.Logf("Start → the main process's first output: %v; the guest's log: %s", firstOut.Round(time.Millisecond), lineWith(console, "network: eth0"))
	shutdown(t, vm, conn)
}

// lineWith returns the console line holding s.
func lineWith(console, s string) string {
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, s) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// playGateway answers, on a net.sock connection (4-byte big-endian length,
// then an Ethernet frame), the guest's ARP request for 10.0.2.2 and then
// its ICMP echo request to 10.0.2.2, which must come to gatewayMAC: the
// guest took the ARP answer. Other frames (IPv6 neighbour discovery) are
// ignored.
func playGateway(c net.Conn, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	gw := net.IPv4(10, 0, 2, 2).To4()
	sawARP := false
	for {
		f, err := readEthFrame(c)
		if err != nil {
			return err
		}
		if len(f) < 42 {
			continue
		}
		switch binary.BigEndian.Uint16(f[12:14]) {
		case 0x0806: // ARP: htype, ptype, hlen, plen, op, sha, spa, tha, tpa
			a := f[14:]
			if binary.BigEndian.Uint16(a[6:8]) != 1 || !bytes.Equal(a[24:28], gw) {
				continue
			}
			sawARP = true
			r := make([]byte, 42)
			copy(r[0:6], a[8:14])
			copy(r[6:12], gatewayMAC)
			binary.BigEndian.PutUint16(r[12:14], 0x0806)
			copy(r[14:20], a[0:6]) // htype, ptype, hlen, plen
			binary.BigEndian.PutUint16(r[20:22], 2)
			copy(r[22:28], gatewayMAC)
			copy(r[28:32], gw)
			copy(r[32:42], a[8:18]) // the asker's MAC and IP
			if err := writeEthFrame(c, r); err != nil {
				return err
			}
		case 0x0800:
			ip := f[14:]
			ihl := int(ip[0]&0xf) * 4
			total := int(binary.BigEndian.Uint16(ip[2:4]))
			if ip[9] != 1 || !bytes.Equal(ip[16:20], gw) || total > len(ip) || ip[ihl] != 8 {
				continue
			}
			if !sawARP || !bytes.Equal(f[0:6], gatewayMAC) {
				return io.ErrUnexpectedEOF
			}
			r := append([]byte{}, f[:14+total]...)
			copy(r[0:6], f[6:12])
			copy(r[6:12], gatewayMAC)
			rip := r[14:]
			copy(rip[12:16], ip[16:20])
			copy(rip[16:20], ip[12:16])
			binary.BigEndian.PutUint16(rip[10:12], 0)
			binary.BigEndian.PutUint16(rip[10:12], checksum(rip[:ihl]))
			icmp := rip[ihl:total]
			icmp[0] = 0 // echo reply
			binary.BigEndian.PutUint16(icmp[2:4], 0)
			binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
			return writeEthFrame(c, r)
		}
	}
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func readEthFrame(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	f := make([]byte, binary.BigEndian.Uint32(n[:]))
	_, err := io.ReadFull(r, f)
	return f, err
}

func writeEthFrame(w io.Writer, f []byte) error {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(f)))
	_, err := w.Write(append(b, f...))
	return err
}
