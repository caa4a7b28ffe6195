// Package devimage builds small OCI images from files on this machine —
// busybox-static above all — and serves them from an in-memory registry on
// a loopback address. `make dev`, tests and benchmarks use it because they
// must never pull from the internet: the images they boot are made here.
package devimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultBusybox is where Debian's busybox-static package puts its binary.
const DefaultBusybox = "/bin/busybox"

// File is one entry of an image layer.
type File struct {
	// Name is the path in the image, without a leading '/'.
	Name string
	// Mode is the permission bits (0 means 0644; 0755 for directories).
	Mode int64
	// Content is a regular file's bytes.
	Content []byte
	// Link, when set, makes the entry a symbolic link to Link.
	Link string
	// Dir makes the entry a directory.
	Dir bool
}

// busyboxApplets are linked to busybox in /bin of a Busybox image.
var busyboxApplets = []string{
	"sh", "ash", "cat", "echo", "env", "hostname", "id", "ls", "mkdir", "pwd", "rm", "sleep",
	"test", "touch", "true", "false", "uname", "whoami", "grep", "head", "tail", "wc", "ps",
	"kill", "mount", "df", "du", "date", "sync", "printf", "readlink", "stat", "cut", "tr", "xargs",
	"sha256sum", "md5sum", "stty", "tty", "dd", "cp", "mv", "ln", "chmod", "find", "tar", "seq", "yes",
}

// Busybox returns the files of a minimal Linux userland: the static busybox
// at busybox (DefaultBusybox when ""), its common applets as symlinks in
// /bin, /etc/passwd and /etc/group with root and an unprivileged user app
// (1000:1000, home /home/app), and /tmp.
func Busybox(busybox string) ([]File, error) {
	if busybox == "" {
		busybox = DefaultBusybox
	}
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("devimage: reading busybox (Debian package busybox-static): %w", err)
	}
	files := []File{
		{Name: "bin", Dir: true},
		{Name: "bin/busybox", Mode: 0o755, Content: bin},
		{Name: "etc", Dir: true},
		{Name: "etc/passwd", Content: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")},
		{Name: "etc/group", Content: []byte("root:x:0:\napp:x:1000:\n")},
		{Name: "home", Dir: true},
		{Name: "home/app", Dir: true, Mode: 0o755},
		{Name: "root", Dir: true, Mode: 0o700},
		{Name: "tmp", Dir: true, Mode: 0o1777},
	}
	for _, a := range busyboxApplets {
		files = append(files, File{Name: "bin/" + a, Link: "busybox"})
	}
	return files, nil
}

// Image makes a one-layer linux/amd64 image of files with the given config
// (Entrypoint, Cmd, Env, WorkingDir, User). Parent directories missing
// from files are added.
func Image(files []File, cfg v1.Config) (v1.Image, error) {
	layer, err := Layer(files)
	if err != nil {
		return nil, err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"}, Config: cfg,
	})
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layer)
}

// Layer makes an uncompressed tar layer of files, in path order.
func Layer(files []File) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	written := map[string]bool{}
	var dirs func(string) error
	dirs = func(p string) error {
		d := path.Dir(p)
		if d == "." || d == "/" || written[d] {
			return nil
		}
		if err := dirs(d); err != nil {
			return err
		}
		written[d] = true
		return tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: epoch})
	}
	sorted := append([]File{}, files...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, f := range sorted {
		if err := dirs(f.Name); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: f.Name, Mode: f.Mode, ModTime: epoch}
		switch {
		case f.Dir:
			h.Name, h.Typeflag = f.Name+"/", tar.TypeDir
			if h.Mode == 0 {
				h.Mode = 0o755
			}
			written[f.Name] = true
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Content))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Content); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// epoch is every entry's modification time: the same files make the same
// image digest.
var epoch = time.Unix(0, 0)

// Registry is an in-memory OCI registry (go-containerregistry's) served
// over plain HTTP.
type Registry struct {
	// Host is "127.0.0.1:<port>", the registry part of image references.
	Host string
	srv  *http.Server
}

// Serve starts a registry on addr ("127.0.0.1:0" picks a free port). Only
// loopback addresses are accepted.
func Serve(addr string) (*Registry, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("devimage: %s is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &Registry{
		Host: ln.Addr().String(),
		srv:  &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second},
	}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Push pushes img as repoTag ("repo/name:tag") and returns its full
// reference on this registry.
func (r *Registry) Push(repoTag string, img v1.Image) (string, error) {
	ref := r.Host + "/" + repoTag
	parsed, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(parsed, img); err != nil {
		return "", fmt.Errorf("devimage: pushing %s: %w", ref, err)
	}
	return ref, nil
}

// Close stops the registry.
func (r *Registry) Close() error {
	if err := r.srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
