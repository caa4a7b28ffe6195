package egressproxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/microvm-dev/sandbox-operator/internal/access"
)

const (
	// leafValidity is the lifetime of a leaf presented to the guest.
	leafValidity = 24 * time.Hour
	// leafRenewBefore is how long before its expiry a cached leaf is
	// replaced.
	leafRenewBefore = time.Hour
	// maxLeaves bounds the cache of leaves; the oldest goes first.
	maxLeaves = 256
)

// leafCache holds the leaves issued per server name. The zero value is
// ready.
type leafCache struct {
	mu     sync.Mutex
	leaves map[string]*tls.Certificate
	order  []string // issue order, oldest first
}

// get returns a leaf for name (a DNS name or an IP address) signed by ca,
// issuing one when none is cached or the cached one is about to expire.
func (c *leafCache) get(ca *access.CA, name string) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaves[name]; ok && time.Until(l.Leaf.NotAfter) > leafRenewBefore {
		return l, nil
	}
	kp, err := ca.IssueServer(name, []string{name}, leafValidity)
	if err != nil {
		return nil, fmt.Errorf("failed to issue a leaf for %q: %w", name, err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		return nil, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	if c.leaves == nil {
		c.leaves = map[string]*tls.Certificate{}
	}
	if _, ok := c.leaves[name]; !ok {
		c.order = append(c.order, name)
	}
	c.leaves[name] = &cert
	for len(c.order) > maxLeaves {
		delete(c.leaves, c.order[0])
		c.order = c.order[1:]
	}
	return &cert, nil
}
