package devimage

import (
	"archive/tar"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	. "github.com/onsi/gomega"
)

func TestBusyboxImageRoundTripsThroughTheRegistry(t *testing.T) {
	g := NewWithT(t)
	files, err := Busybox("")
	g.Expect(err).NotTo(HaveOccurred(), "hack/setup.sh installs busybox-static")
	img, err := Image(files, v1.Config{Cmd: []string{"/bin/sh", "-c", "echo hi"}, User: "app"})
	g.Expect(err).NotTo(HaveOccurred())

	reg, err := Serve("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = reg.Close() }()
	ref, err := reg.Push("dev/busybox:1", img)
	g.Expect(err).NotTo(HaveOccurred())

	parsed, err := name.ParseReference(ref, name.Insecure)
	g.Expect(err).NotTo(HaveOccurred())
	pulled, err := remote.Image(parsed)
	g.Expect(err).NotTo(HaveOccurred())
	want, _ := img.Digest()
	g.Expect(pulled.Digest()).To(Equal(want))
	cfg, err := pulled.ConfigFile()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(cfg.Config.User).To(Equal("app"))

	// The flattened filesystem has busybox, its applets as links and the
	// parent directories.
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(mutate.Extract(pulled))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		g.Expect(err).NotTo(HaveOccurred())
		entries[h.Name] = h
	}
	g.Expect(entries).To(HaveKey("bin/busybox"))
	g.Expect(entries["bin/sh"].Linkname).To(Equal("busybox"))
	g.Expect(entries).To(Or(HaveKey("home/app/"), HaveKey("home/app")))
	g.Expect(entries["etc/passwd"].Size).To(BeNumerically(">", 0))
}

func TestServeRefusesNonLoopback(t *testing.T) {
	_, err := Serve("0.0.0.0:0")
	NewWithT(t).Expect(err).To(MatchError(ContainSubstring("not a loopback address")))
}

func TestImageDigestIsReproducible(t *testing.T) {
	g := NewWithT(t)
	files := []File{{Name: "a/b.txt", Content: []byte("x")}}
	i1, err := Image(files, v1.Config{})
	g.Expect(err).NotTo(HaveOccurred())
	i2, err := Image(files, v1.Config{})
	g.Expect(err).NotTo(HaveOccurred())
	d1, _ := i1.Digest()
	g.Expect(i2.Digest()).To(Equal(d1))
}
