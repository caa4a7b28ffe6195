package image

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
)

func TestExtractTarStaysInsideTheRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("extracting with owners needs root")
	}
	tests := []struct {
		name    string
		entries func(outside string) []entry
		wantErr error // nil: succeeds
		// wantAnyErr: fails, with an error from os.Root rather than a sentinel.
		wantAnyErr bool
		check      func(g Gomega, root string)
	}{
		{
			name:    "an entry named ../escape is rejected",
			entries: func(string) []entry { return []entry{{name: "../escape", body: "x"}} },
			wantErr: ErrInvalidImage,
		},
		{
			name:    "an entry named /../escape is rejected",
			entries: func(string) []entry { return []entry{{name: "/../escape", body: "x"}} },
			wantErr: ErrInvalidImage,
		},
		{
			name:    "an entry named a/../../escape is rejected",
			entries: func(string) []entry { return []entry{{name: "a/../../escape", body: "x"}} },
			wantErr: ErrInvalidImage,
		},
		{
			name: "a hard link to ../escape is rejected",
			entries: func(string) []entry {
				return []entry{{name: "link", typ: tar.TypeLink, link: "../escape"}}
			},
			wantErr: ErrInvalidImage,
		},
		{
			name: "a file under an absolute symlink is not written outside",
			entries: func(outside string) []entry {
				return []entry{
					{name: "evil", typ: tar.TypeSymlink, link: outside},
					{name: "evil/pwned", body: "x"},
				}
			},
			wantAnyErr: true,
		},
		{
			name: "a file under a relative symlink out of the root is not written outside",
			entries: func(outside string) []entry {
				return []entry{
					{name: "evil", typ: tar.TypeSymlink, link: "../../../../../../../../" + outside},
					{name: "evil/pwned", body: "x"},
				}
			},
			wantAnyErr: true,
		},
		{
			name: "a hard link to a file through an escaping symlink is refused",
			entries: func(outside string) []entry {
				return []entry{
					{name: "evil", typ: tar.TypeSymlink, link: outside},
					{name: "pwned", typ: tar.TypeLink, link: "evil/secret"},
				}
			},
			wantAnyErr: true,
		},
		{
			name: "a hard link with an absolute target links inside the root",
			entries: func(string) []entry {
				return []entry{
					{name: "etc/a", body: "inside\n"},
					{name: "etc/b", typ: tar.TypeLink, link: "/etc/a"},
				}
			},
			check: func(g Gomega, root string) {
				g.Expect(os.ReadFile(filepath.Join(root, "etc/b"))).To(Equal([]byte("inside\n")))
			},
		},
		{
			name: "a hard link to a file the image does not contain is an invalid image",
			entries: func(string) []entry {
				return []entry{{name: "b", typ: tar.TypeLink, link: "missing"}}
			},
			wantErr: ErrInvalidImage,
		},
		{
			name: "a symlink to a path outside is created verbatim and not followed",
			entries: func(outside string) []entry {
				return []entry{{name: "etc/passwd", typ: tar.TypeSymlink, link: filepath.Join(outside, "secret")}}
			},
			check: func(g Gomega, root string) {
				g.Expect(os.Readlink(filepath.Join(root, "etc/passwd"))).To(HaveSuffix("/secret"))
			},
		},
		{
			name: "a directory entry after its contents keeps its mode and owner",
			entries: func(string) []entry {
				return []entry{
					{name: "d/f", body: "x"},
					{name: "d/", typ: tar.TypeDir, mode: 0o750, uid: 7, gid: 8},
				}
			},
			check: func(g Gomega, root string) {
				fi, err := os.Stat(filepath.Join(root, "d"))
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(fi.Mode().Perm()).To(Equal(os.FileMode(0o750)))
			},
		},
		{
			name: "a FIFO is created",
			entries: func(string) []entry {
				return []entry{{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600}}
			},
			check: func(g Gomega, root string) {
				fi, err := os.Lstat(filepath.Join(root, "run/fifo"))
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(fi.Mode() & os.ModeNamedPipe).NotTo(BeZero())
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			base := t.TempDir()
			root := filepath.Join(base, "a", "b", "rootfs")
			outside := filepath.Join(base, "outside")
			g.Expect(os.MkdirAll(root, 0o755)).To(Succeed())
			g.Expect(os.MkdirAll(outside, 0o755)).To(Succeed())
			g.Expect(os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600)).To(Succeed())

			stream := tarEntries(t, tt.entries(outside)...)
			_, err := extractTar(context.Background(), bytes.NewReader(stream), root)
			if err != nil {
				t.Logf("error: %v", err)
			}

			switch {
			case tt.wantErr != nil:
				g.Expect(err).To(MatchError(tt.wantErr))
			case tt.wantAnyErr:
				g.Expect(err).To(HaveOccurred())
			default:
				g.Expect(err).NotTo(HaveOccurred())
				tt.check(g, root)
			}
			left, err := os.ReadDir(outside)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(left).To(HaveLen(1), "nothing was written outside the root")
			g.Expect(filepath.Join(base, "escape")).NotTo(BeAnExistingFile())
			g.Expect(filepath.Join(base, "a", "escape")).NotTo(BeAnExistingFile())
			g.Expect(filepath.Join(base, "a", "b", "escape")).NotTo(BeAnExistingFile())
		})
	}
}
