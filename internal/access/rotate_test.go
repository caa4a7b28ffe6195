package access

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestRotatingCertRenewsAfterTwoThirdsOfItsLifetime(t *testing.T) {
	g := NewWithT(t)
	ca, err := NewCA("rotate-test", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	var failNext bool
	issued := 0
	r, err := NewRotatingCert(func() (KeyPair, error) {
		if failNext {
			return KeyPair{}, errors.New("the CA Secret is unreadable")
		}
		issued++
		return ca.IssueServer("svc", []string{"svc.ns.svc"}, 3*time.Hour)
	})
	g.Expect(err).NotTo(HaveOccurred())
	start := time.Now()
	r.now = func() time.Time { return start }
	serial := func() string {
		c, err := r.Current()
		g.Expect(err).NotTo(HaveOccurred())
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		g.Expect(err).NotTo(HaveOccurred())
		return leaf.SerialNumber.String()
	}
	first := serial()

	r.now = func() time.Time { return start.Add(time.Hour) }
	g.Expect(serial()).To(Equal(first), "a third of the way: the same certificate")

	r.now = func() time.Time { return start.Add(2*time.Hour + time.Minute) }
	failNext = true
	g.Expect(serial()).To(Equal(first), "a failed renewal keeps the certificate, still valid for an hour")
	failNext = false
	second := serial()
	g.Expect(second).NotTo(Equal(first), "past two thirds of three hours: renewed at the next use")
	g.Expect(serial()).To(Equal(second), "and kept until its own renewal time")
	g.Expect(issued).To(Equal(2))

	cert, err := r.GetCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())
	client, err := r.GetClientCertificate(nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(client).To(BeIdenticalTo(cert))
}
