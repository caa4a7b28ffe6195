package netstack

import (
	"context"
	"errors"
	"net"
	"sync"
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

// udpPublishIdle ends a published UDP port's flow (one per client address)
// after this long without a datagram either way.
const udpPublishIdle = 60 * time.Second

// maxUDPPublishFlows bounds the client addresses a published UDP port
// tracks at once; datagrams from further clients are dropped.
const maxUDPPublishFlows = 1024

// PublishUDP serves a published UDP port: datagrams arriving on pc (a node
// socket) go to the guest's guestPort through the stack, from one stack
// socket per client address, and the guest's answers go back to that
// client; until pc is closed or the stack closes.
func (n *Net) PublishUDP(pc net.PacketConn, guestPort uint16) error {
	stop := context.AfterFunc(n.ctx, func() { _ = pc.Close() })
	defer stop()
	var mu sync.Mutex
	flows := map[string]*gonet.UDPConn{}
	defer func() {
		mu.Lock()
		for _, c := range flows {
			_ = c.Close()
		}
		mu.Unlock()
	}()
	buf := make([]byte, 65535)
	for {
		k, client, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		key := client.String()
		mu.Lock()
		c := flows[key]
		if c == nil && len(flows) < maxUDPPublishFlows {
			c, err = gonet.DialUDP(n.s, nil, &tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(DefaultGuest), Port: guestPort}, ipv4.ProtocolNumber)
			if err == nil {
				flows[key] = c
				go func() {
					n.answerUDP(c, pc, client)
					mu.Lock()
					delete(flows, key)
					mu.Unlock()
					_ = c.Close()
				}()
			}
		}
		mu.Unlock()
		if c == nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(udpPublishIdle))
		if _, err := c.Write(buf[:k]); err == nil {
			n.Stats.BytesIn.Add(uint64(k))
		}
	}
}

// answerUDP sends the guest's datagrams on c back to client until c is
// idle for udpPublishIdle or closed.
func (n *Net) answerUDP(c *gonet.UDPConn, pc net.PacketConn, client net.Addr) {
	buf := make([]byte, 65535)
	for {
		_ = c.SetReadDeadline(time.Now().Add(udpPublishIdle))
		k, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := pc.WriteTo(buf[:k], client); err == nil {
			n.Stats.BytesOut.Add(uint64(k))
		}
	}
}
