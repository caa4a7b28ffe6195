package egressproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/access"
)

// MaxBody is the largest request body in which a placeholder is
// substituted; longer bodies pass unchanged.
const MaxBody = 16 << 20

const (
	// peekTimeout bounds the wait for the guest's first bytes. A protocol in
	// which the server speaks first (SSH, SMTP) sends nothing: after this
	// wait the connection is spliced unchanged.
	peekTimeout = 3 * time.Second
	// dialTimeout bounds dialling the destination and its TLS handshake.
	dialTimeout = 30 * time.Second
	// maxMethod bounds how far a plain-HTTP method is looked for.
	maxMethod = 16
)

// Secret is one value that the guest knows only by its placeholder.
type Secret struct {
	// Name identifies the secret in reports and in the guest's 403 body:
	// the guest environment variable that holds the placeholder. Never the
	// value.
	Name string
	// Placeholder is what the guest sends in place of the value. It must not
	// be empty.
	Placeholder string
	// Value is the real value.
	Value []byte
	// AllowedHosts are the hosts the value may be sent to: exact names, or
	// "*.example.com", which matches every name below example.com (any
	// depth) but not example.com itself. Matching ignores case and a
	// trailing dot.
	AllowedHosts []string
	// Headers substitutes in every request header value (Authorization:
	// Bearer, X-Api-Key, ...). The API's default is true.
	Headers bool
	// BasicAuth substitutes in the user name and password of Basic
	// Authorization and Proxy-Authorization credentials. The API's default
	// is true.
	BasicAuth bool
	// QueryParams substitutes in the names and values of the URL's query.
	QueryParams bool
	// Body substitutes in request bodies up to MaxBody bytes.
	Body bool
}

// Violation is a request that carried a secret's placeholder toward a host
// that the secret does not allow. The request was not forwarded.
type Violation struct {
	// Time is when the proxy blocked the request.
	Time time.Time
	// Secret is the secret's Name.
	Secret string
	// Host is the name the request was bound for: the request's Host (for
	// TLS, the server name when the guest sent none).
	Host string
	// Dst is the destination the guest connected to.
	Dst netip.AddrPort
	// Where is the first place the placeholder was found: "header <Name>",
	// "basic auth", "query" or "body".
	Where string
	// Reason says why the host is not allowed.
	Reason string
}

// Proxy substitutes a sandbox's secrets into the guest's HTTP requests. Set
// its fields before the first Handle and leave them unchanged afterwards;
// Handle may run concurrently. A Proxy must not be copied after first use.
type Proxy struct {
	// CA issues the leaf certificates presented to the guest. Its
	// certificate is in the guest's trust store (someone else put it
	// there). Required.
	CA *access.CA
	// Secrets are the sandbox's secrets.
	Secrets []Secret
	// RootCAs verify the destinations' certificates; nil means the node's
	// system roots.
	RootCAs *x509.CertPool
	// Dial opens the node-side connection to a destination. Nil means a
	// net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// NamesOf returns the names the sandbox's resolver answered with addr
	// (netpolicy.Names.Lookup); plain-HTTP requests carry a secret only to
	// such a name. Nil means no names: secrets are never substituted into
	// plain HTTP.
	NamesOf func(addr netip.Addr) []string
	// OnViolation, if set, is called once per secret for each blocked
	// request, from the goroutine running Handle.
	OnViolation func(Violation)
	// Ports are the destination ports Intercepts selects; nil means 80 and
	// 443.
	Ports []uint16

	leaves leafCache
}

// defaultPorts are HTTP's and HTTPS's.
var defaultPorts = []uint16{80, 443}

// Intercepts reports whether the guest's TCP connections to dst should be
// given to Handle instead of spliced: when the proxy holds a secret and
// dst's port is among Ports (80 and 443 by default). Without secrets there is
// nothing to substitute, and the guest keeps end-to-end TLS. Connections to
// other ports go out unchanged: they can carry a placeholder, never the
// value, and a secret is not substituted there even for an allowed host.
func (p *Proxy) Intercepts(dst netip.AddrPort) bool {
	if len(p.Secrets) == 0 {
		return false
	}
	ports := p.Ports
	if ports == nil {
		ports = defaultPorts
	}
	return slices.Contains(ports, dst.Port())
}

// errNoCA is returned by Handle when the proxy has no CA.
var errNoCA = errors.New("egress proxy has no CA")

// Handle serves one guest TCP connection to dst, which the egress policy
// allowed, and closes it: TLS is terminated and its HTTP/1.1 requests are
// substituted or blocked, as are plain-HTTP requests; anything else is
// spliced unchanged (see the package doc). It returns when either side ends the connection
// or ctx is done; a connection that ends normally returns nil.
func (p *Proxy) Handle(ctx context.Context, guest net.Conn, dst netip.AddrPort) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = guest.Close() })
	defer stop()
	defer func() { _ = guest.Close() }()

	if p.CA == nil {
		return errNoCA
	}
	for _, s := range p.Secrets {
		if s.Placeholder == "" {
			return fmt.Errorf("secret %s has an empty placeholder", s.Name)
		}
	}

	br := bufio.NewReader(guest)
	kind, err := classify(guest, br)
	if errors.Is(err, io.EOF) {
		return nil // closed before a byte
	}
	if err != nil {
		return err
	}
	switch kind {
	case kindTLS:
		return p.handleTLS(ctx, &prefixConn{Conn: guest, r: br}, dst)
	case kindHTTP:
		return p.handleHTTP(ctx, guest, br, dst)
	default:
		up, err := p.dial(ctx, dst)
		if err != nil {
			return err
		}
		splice(ctx, guest, br, up, up)
		return nil
	}
}

type connKind int

const (
	kindOther connKind = iota
	kindTLS
	kindHTTP
)

// classify peeks at the guest's first bytes: a TLS handshake record, an
// HTTP request line (an upper-case method and a space), or anything else.
// Silence for peekTimeout is anything else.
func classify(guest net.Conn, br *bufio.Reader) (connKind, error) {
	_ = guest.SetReadDeadline(time.Now().Add(peekTimeout))
	defer func() { _ = guest.SetReadDeadline(time.Time{}) }()
	for n := 1; n <= maxMethod+1; n++ {
		b, err := br.Peek(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return kindOther, nil
		}
		if err != nil {
			if len(b) > 0 {
				return kindOther, nil // a few bytes, then EOF: splice them
			}
			return kindOther, err
		}
		if n == 1 && b[0] == 0x16 { // TLS handshake record
			return kindTLS, nil
		}
		c := b[n-1]
		switch {
		case c == ' ' && string(b) == "PRI ":
			return kindOther, nil // HTTP/2 with prior knowledge: see the package doc
		case c == ' ' && n > 1:
			return kindHTTP, nil
		case c < 'A' || c > 'Z':
			return kindOther, nil
		}
	}
	return kindOther, nil
}

// dial opens a TCP connection to dst.
func (p *Proxy) dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	dial := p.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, "tcp", dst.String())
	if err != nil {
		return nil, fmt.Errorf("failed to dial %s: %w", dst, err)
	}
	return c, nil
}

// errHelloSeen stops the handshake that only reads the ClientHello.
var errHelloSeen = errors.New("client hello seen")

// readHello reads the guest's ClientHello from br without consuming it: the
// bytes the sniffing handshake read are returned, to be replayed.
func readHello(br io.Reader) (*tls.ClientHelloInfo, []byte, error) {
	var seen bytes.Buffer
	var hello *tls.ClientHelloInfo
	sniff := tls.Server(readOnlyConn{r: io.TeeReader(br, &seen)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = &tls.ClientHelloInfo{ServerName: h.ServerName, SupportedProtos: slices.Clone(h.SupportedProtos)}
			return nil, errHelloSeen
		},
	})
	err := sniff.Handshake()
	if hello == nil {
		return nil, seen.Bytes(), fmt.Errorf("failed to read the guest's TLS ClientHello: %w", err)
	}
	return hello, seen.Bytes(), nil
}

// handleTLS terminates the guest's TLS and proxies its requests to dst over
// TLS verified for the same server name.
func (p *Proxy) handleTLS(ctx context.Context, guest *prefixConn, dst netip.AddrPort) error {
	hello, seen, err := readHello(guest.r)
	guest.r = io.MultiReader(bytes.NewReader(seen), guest.r)
	if err != nil {
		return err
	}
	sni := normalizeHost(hello.ServerName)
	if len(hello.SupportedProtos) > 0 && !slices.Contains(hello.SupportedProtos, "http/1.1") {
		// HTTP/2 only (gRPC): not ours to read; see the package doc.
		up, err := p.dial(ctx, dst)
		if err != nil {
			return err
		}
		splice(ctx, guest, guest.r, up, up)
		return nil
	}
	serverName := sni
	if serverName == "" {
		serverName = dst.Addr().String() // verified against IP SANs
	}
	leaf, err := p.leaves.get(p.CA, serverName)
	if err != nil {
		return err
	}
	gtls := tls.Server(guest, &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	up, upErr := p.dialTLS(ctx, dst, serverName)
	hctx, cancel := context.WithTimeout(ctx, dialTimeout)
	err = gtls.HandshakeContext(hctx)
	cancel()
	if err != nil {
		if up != nil {
			_ = up.Close()
		}
		return fmt.Errorf("failed the guest's TLS handshake for %q: %w", serverName, err)
	}
	s := &session{p: p, guest: gtls, gr: bufio.NewReader(gtls), dst: dst, tls: true, sni: sni}
	if upErr != nil {
		s.refuse(nil, badGateway(fmt.Sprintf("the egress proxy could not open a verified TLS connection to %s for %q: %v", dst, serverName, upErr)))
		return upErr
	}
	return s.serve(ctx, up)
}

// dialTLS dials dst and verifies its certificate for serverName.
func (p *Proxy) dialTLS(ctx context.Context, dst netip.AddrPort, serverName string) (net.Conn, error) {
	c, err := p.dial(ctx, dst)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	up := tls.Client(c, &tls.Config{
		ServerName: serverName,
		RootCAs:    p.RootCAs,
		NextProtos: []string{"http/1.1"},
		MinVersion: tls.VersionTLS12,
	})
	if err := up.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("failed the TLS handshake with %s for %q: %w", dst, serverName, err)
	}
	return up, nil
}

// handleHTTP proxies the guest's plain-HTTP requests to dst.
func (p *Proxy) handleHTTP(ctx context.Context, guest net.Conn, br *bufio.Reader, dst netip.AddrPort) error {
	s := &session{p: p, guest: guest, gr: br, dst: dst}
	up, err := p.dial(ctx, dst)
	if err != nil {
		s.refuse(nil, badGateway(fmt.Sprintf("the egress proxy could not connect to %s: %v", dst, err)))
		return err
	}
	return s.serve(ctx, up)
}

// prefixConn is a net.Conn whose reads come from r (a reader over the
// connection holding bytes already peeked).
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite half-closes the connection when it can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// readOnlyConn feeds a sniffing tls.Server: reads come from r, writes fail.
type readOnlyConn struct {
	net.Conn // nil: only the methods below are used
	r        io.Reader
}

func (c readOnlyConn) Read(b []byte) (int, error)     { return c.r.Read(b) }
func (readOnlyConn) Write([]byte) (int, error)        { return 0, io.ErrClosedPipe }
func (readOnlyConn) Close() error                     { return nil }
func (readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// splice copies guest ↔ up with half-closes until both ways end or ctx is
// done. gr and ur read from guest and up (they may hold buffered bytes).
func splice(ctx context.Context, guest net.Conn, gr io.Reader, up net.Conn, ur io.Reader) {
	stop := context.AfterFunc(ctx, func() { _ = guest.Close(); _ = up.Close() })
	defer stop()
	var wg sync.WaitGroup
	cp := func(dst net.Conn, src io.Reader) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go cp(up, gr)
	go cp(guest, ur)
	wg.Wait()
	_ = guest.Close()
	_ = up.Close()
}

// normalizeHost lower-cases a name and drops a trailing dot.
func normalizeHost(h string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), "."))
}

// hostMatches reports whether the normalized name h matches one of the
// patterns: an exact name or "*.suffix" for every name below suffix.
func hostMatches(patterns []string, h string) bool {
	if h == "" {
		return false
	}
	for _, pat := range patterns {
		pat = normalizeHost(pat)
		if suffix, ok := strings.CutPrefix(pat, "*."); ok {
			if strings.HasSuffix(h, "."+suffix) {
				return true
			}
		} else if h == pat {
			return true
		}
	}
	return false
}
