package tcpprobe

import (
	"context"
	"net"
	"testing"

	. "github.com/onsi/gomega"
)

func TestSendIsAcknowledgedWithTheSinksCount(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	sunk := make(chan Transfer, 1)
	done := make(chan error, 1)
	go func() { done <- Sink(ln, func(tr Transfer) { sunk <- tr }) }()

	tr, err := Send(context.Background(), ln.Addr().String(), 3<<20+7)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(tr.Bytes).To(Equal(int64(3<<20 + 7)))
	g.Expect(tr.MiBps()).To(BeNumerically(">", 0))
	g.Expect((<-sunk).Bytes).To(Equal(int64(3<<20 + 7)))

	g.Expect(ln.Close()).To(Succeed())
	g.Expect(<-done).To(Succeed())
}

func TestConnectTimesEachEchoedRoundTrip(t *testing.T) {
	g := NewWithT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	done := make(chan error, 1)
	go func() { done <- Echo(ln) }()

	ms, err := Connect(context.Background(), ln.Addr().String(), 3)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ms).To(HaveLen(3))
	g.Expect(ms).To(HaveEach(BeNumerically(">", 0)))

	g.Expect(ln.Close()).To(Succeed())
	g.Expect(<-done).To(Succeed())
}
