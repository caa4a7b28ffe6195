package plugin

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
)

type entry struct {
	name, link, body string
	typ              byte
}

func archive(g Gomega, entries ...entry) *bytes.Buffer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == tar.TypeDir {
			hdr.Mode = 0o755
		}
		g.Expect(tw.WriteHeader(hdr)).To(Succeed())
		_, err := tw.Write([]byte(e.body))
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(tw.Close()).To(Succeed())
	return &buf
}

// The archive of a download comes from inside the sandbox: nothing in it
// may write outside the destination.
func TestReadTarStaysInsideTheDestination(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries []entry
		warning string
		err     string
	}{
		{name: "entries outside the prefix are skipped", entries: []entry{{name: "other/f", body: "x", typ: tar.TypeReg}}, warning: `skipping "other/f": outside "src"`},
		{name: "a name sharing the prefix's first letters is outside it", entries: []entry{{name: "srcx/f", body: "x", typ: tar.TypeReg}}, warning: "outside"},
		{name: "dot-dot climbs are skipped", entries: []entry{{name: "src/../../escape", body: "x", typ: tar.TypeReg}}, warning: "outside"},
		{name: "absolute symlinks are skipped", entries: []entry{{name: "src/l", link: "/etc", typ: tar.TypeSymlink}}, warning: "points outside"},
		{name: "symlinks out of the destination are skipped", entries: []entry{{name: "src/d/l", link: "../../x", typ: tar.TypeSymlink}}, warning: "points outside"},
		{
			name: "no writing through a symlink made by an earlier entry",
			entries: []entry{
				{name: "src/d", typ: tar.TypeDir},
				{name: "src/l", link: "d", typ: tar.TypeSymlink},
				{name: "src/l/f", body: "x", typ: tar.TypeReg},
			},
			err: "through the symbolic link",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			base := t.TempDir()
			dest := filepath.Join(base, "dest")
			var warn bytes.Buffer
			err := readTar(archive(g, c.entries...), "src", dest, &warn)
			if c.err != "" {
				g.Expect(err).To(MatchError(ContainSubstring(c.err)))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(warn.String()).To(ContainSubstring(c.warning))
			}
			// Nothing but dest appeared in base.
			des, err := os.ReadDir(base)
			g.Expect(err).NotTo(HaveOccurred())
			for _, d := range des {
				g.Expect(d.Name()).To(Equal("dest"))
			}
			g.Expect(filepath.Join(base, "escape")).NotTo(BeAnExistingFile())
		})
	}
}
