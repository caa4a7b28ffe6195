package netstack

import (
	"context"
	"errors"
	"net"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// guestDialTimeout bounds a published port's dial into the guest.
const guestDialTimeout = 10 * time.Second

// Publish serves a published TCP port: each connection accepted on ln (a
// node listener) is dialled into the guest's guestPort through the stack,
// until ln is closed or the stack closes. The guest sees the connection
// come from the gateway. A connection the guest refuses is closed.
func (n *Net) Publish(ln net.Listener, guestPort uint16) error {
	stop := context.AfterFunc(n.ctx, func() { _ = ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			ctx, cancel := context.WithTimeout(n.ctx, guestDialTimeout)
			defer cancel()
			g, err := gonet.DialContextTCP(ctx, n.s,
				tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(DefaultGuest), Port: guestPort}, ipv4.ProtocolNumber)
			if err != nil {
				n.cfg.Log.V(4).Info("Failing to reach a published port in the guest", "port", guestPort, "error", err.Error())
				_ = c.Close()
				return
			}
			n.splice(g, c)
		}()
	}
}
