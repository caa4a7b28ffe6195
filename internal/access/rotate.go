package access

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"
)

// RotatingCert holds a certificate its issue function made and issues the
// next one once two thirds of its lifetime have passed, when it is next
// used, so that a manager that runs longer than a certificate's validity
// keeps serving the aggregation layer and keeps being accepted by the node
// agents (both check expiry). Its CA lives much longer (clientCAValidity):
// only the leaves turn over.
type RotatingCert struct {
	issue func() (KeyPair, error)
	// now is time.Now, replaced in tests.
	now func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

// NewRotatingCert issues the first certificate.
func NewRotatingCert(issue func() (KeyPair, error)) (*RotatingCert, error) {
	r := &RotatingCert{issue: issue, now: time.Now}
	if err := r.renew(); err != nil {
		return nil, err
	}
	return r, nil
}

// renew issues a certificate and schedules its successor; mu is held or
// r is not shared yet.
func (r *RotatingCert) renew() error {
	pair, err := r.issue()
	if err != nil {
		return err
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return err
	}
	// Two thirds of the way from now (NotBefore is backdated for clock
	// skew) to the expiry.
	now := r.now()
	r.cert = &cert
	r.renewAt = now.Add(leaf.NotAfter.Sub(now) * 2 / 3)
	return nil
}

// Current returns the certificate, renewed first when it is due. A failed
// renewal keeps the current certificate (still valid for a third of its
// lifetime) and is retried at the next use.
func (r *RotatingCert) Current() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.now().Before(r.renewAt) {
		if err := r.renew(); err != nil && r.cert == nil {
			return nil, err
		}
	}
	if r.cert == nil {
		return nil, errors.New("no certificate")
	}
	return r.cert, nil
}

// GetCertificate serves it (tls.Config.GetCertificate).
func (r *RotatingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Current()
}

// GetClientCertificate presents it (tls.Config.GetClientCertificate).
func (r *RotatingCert) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.Current()
}
