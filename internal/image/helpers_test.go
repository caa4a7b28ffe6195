package image

import (
	"archive/tar"
	"bytes"
	"encoding/pem"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testRegistry is go-containerregistry's in-memory registry on 127.0.0.1,
// behind a handler that records requests and can demand basic auth.
type testRegistry struct {
	srv   *httptest.Server
	host  string
	inner http.Handler

	// user and password, when user is set, are required on every request.
	user, password string
	// manifestDelay holds each manifest GET, to widen race windows.
	manifestDelay time.Duration

	mu       sync.Mutex
	requests []string
}

func newRegistry(t *testing.T, useTLS bool) *testRegistry {
	t.Helper()
	r := &testRegistry{inner: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	r.srv = httptest.NewUnstartedServer(r)
	// TLS handshake failures are expected in some tests; keep them quiet.
	r.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if useTLS {
		r.srv.StartTLS()
	} else {
		r.srv.Start()
	}
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(strings.TrimPrefix(r.srv.URL, "http://"), "https://")
	return r
}

func (r *testRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.requests = append(r.requests, req.Method+" "+req.URL.Path)
	r.mu.Unlock()
	if r.user != "" {
		u, p, ok := req.BasicAuth()
		if !ok || u != r.user || p != r.password {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
	}
	if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/manifests/") {
		time.Sleep(r.manifestDelay)
	}
	r.inner.ServeHTTP(w, req)
}

// caPEM is the test server's certificate, which signs itself.
func (r *testRegistry) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
}

// push writes img under repo:tag and returns its manifest digest.
func (r *testRegistry) push(t *testing.T, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithTransport(r.srv.Client().Transport)}
	if r.user != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.user, Password: r.password}))
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatalf("failed to push %s: %v", ref, err)
	}
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (r *testRegistry) pushIndex(t *testing.T, repoTag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, remote.WithTransport(r.srv.Client().Transport)); err != nil {
		t.Fatalf("failed to push %s: %v", ref, err)
	}
	h, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (r *testRegistry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = nil
}

// traffic summarises the requests since the last reset.
type traffic struct {
	total     int
	manifests []string       // the reference of each manifest GET
	blobs     map[string]int // GETs per blob digest
}

func (r *testRegistry) traffic() traffic {
	r.mu.Lock()
	defer r.mu.Unlock()
	tr := traffic{total: len(r.requests), blobs: map[string]int{}}
	for _, req := range r.requests {
		method, p, _ := strings.Cut(req, " ")
		if method != http.MethodGet {
			continue
		}
		if _, ref, ok := strings.Cut(p, "/manifests/"); ok {
			tr.manifests = append(tr.manifests, ref)
		}
		if _, d, ok := strings.Cut(p, "/blobs/"); ok {
			tr.blobs[d]++
		}
	}
	return tr
}

// entry is one tar entry of a hand-made layer.
type entry struct {
	name     string
	typ      byte // tar.TypeReg when zero
	body     string
	mode     int64
	uid, gid int
	link     string
	pax      map[string]string
}

// tarEntries makes an uncompressed tar stream of entries, in order.
func tarEntries(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0), PAXRecords: e.pax}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil && h.Size > 0 {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarDir makes a tar stream of a directory on disk, as an image builder
// would: modes, owners, symlinks and hard links (by inode) as they are.
func tarDir(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		st := fi.Sys().(*syscall.Stat_t)
		h.Uid, h.Gid, h.Uname, h.Gname = int(st.Uid), int(st.Gid), "", ""
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			if first, ok := seen[st.Ino]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				seen[st.Ino] = h.Name
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerOf makes a gzip-compressed layer of a tar stream.
func layerOf(t *testing.T, stream []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(stream)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf makes a linux/amd64 image (or another platform) of layers.
func imageOf(t *testing.T, cfg v1.Config, platform string, layers ...v1.Layer) v1.Image {
	t.Helper()
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, Config: cfg,
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// smallImage is a one-layer image whose file /id holds id, so that two
// images differ.
func smallImage(t *testing.T, id string) v1.Image {
	t.Helper()
	return imageOf(t, v1.Config{Cmd: []string{"/bin/" + id}}, DefaultPlatform,
		layerOf(t, tarEntries(t, entry{name: "id", body: id + "\n"})))
}

// mkfsCounter returns a mkfs.ext4 wrapper that counts its runs.
func mkfsCounter(t *testing.T) (path string, count func() int) {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 (e2fsprogs) is not installed")
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "runs")
	path = filepath.Join(dir, "mkfs.ext4")
	script := "#!/bin/sh\necho run >> " + strconv.Quote(log) + "\nexec " + strconv.Quote(mkfs) + " \"$@\"\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, func() int {
		b, err := os.ReadFile(log)
		if err != nil {
			return 0
		}
		return strings.Count(string(b), "run\n")
	}
}

// newTestCache returns a Cache in a temporary directory and its mkfs count.
func newTestCache(t *testing.T) (*Cache, func() int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("extracting images with their owners needs root")
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("debugfs (e2fsprogs) is not installed")
	}
	mkfs, count := mkfsCounter(t)
	c, err := New(t.TempDir(), WithMkfs(mkfs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, count
}

// ext4Stat is what debugfs's stat says about one path of an ext4 image.
type ext4Stat struct {
	exists bool
	inode  int
	typ    string
	mode   string
	uid    int
	gid    int
	links  int
	target string // a fast symlink's destination
}

var (
	reInode  = regexp.MustCompile(`Inode:\s+(\d+)\s+Type:\s+(\S+)\s+Mode:\s+(\d+)`)
	reOwner  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reLinks  = regexp.MustCompile(`Links:\s+(\d+)`)
	reTarget = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

func debugfs(t *testing.T, img, request string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", request, img)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", request, err, errb.String())
	}
	return out.String(), errb.String()
}

func statExt4(t *testing.T, img, p string) ext4Stat {
	t.Helper()
	out, errOut := debugfs(t, img, "stat "+p)
	if strings.Contains(errOut, "File not found") {
		return ext4Stat{}
	}
	m := reInode.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("debugfs stat %s: unexpected output %q %q", p, out, errOut)
	}
	s := ext4Stat{exists: true, typ: m[2], mode: m[3]}
	s.inode, _ = strconv.Atoi(m[1])
	if o := reOwner.FindStringSubmatch(out); o != nil {
		s.uid, _ = strconv.Atoi(o[1])
		s.gid, _ = strconv.Atoi(o[2])
	}
	if l := reLinks.FindStringSubmatch(out); l != nil {
		s.links, _ = strconv.Atoi(l[1])
	}
	if tg := reTarget.FindStringSubmatch(out); tg != nil {
		s.target = tg[1]
	}
	return s
}

func catExt4(t *testing.T, img, p string) string {
	t.Helper()
	out, _ := debugfs(t, img, "cat "+p)
	return out
}

func lsExt4(t *testing.T, img, p string) []string {
	t.Helper()
	out, _ := debugfs(t, img, "ls "+p)
	var names []string
	for _, f := range strings.Fields(out) {
		// "ls" prints "inode (reclen) name" triples.
		if !strings.HasPrefix(f, "(") && !isDigits(f) && f != "." && f != ".." {
			names = append(names, f)
		}
	}
	sort.Strings(names)
	return names
}

func isDigits(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}
