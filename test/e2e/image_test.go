//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// busyboxCandidates are where Debian's busybox-static (hack/setup.sh)
// puts its binary; the plain busybox package is dynamically linked and
// would not run in an image without a libc.
var busyboxCandidates = []string{"/bin/busybox", "/usr/bin/busybox"}

// busyboxApplets are linked to /bin/busybox in the test image: what the
// sandboxes' shell scripts call.
var busyboxApplets = []string{
	"sh", "id", "hostname", "cat", "ls", "pwd", "sleep", "echo", "env", "test",
	"readlink", "true", "false", "mkdir", "touch", "whoami", "uname",
	"sha256sum", "stty", // the access API's exec specs
	"httpd", "grep", "find", // the network specs
}

// testImage is the image the VM specs boot: a static busybox with its
// applets, an /etc/passwd and /etc/group naming a non-root user app
// (1000:1000) with home /home/app, and `sleep 3600` as its CMD (no
// ENTRYPOINT).
type testImage struct {
	// Ref is where it was pushed, e.g. 127.0.0.1:41234/e2e/busybox:1.
	Ref string
	// Cmd is the image config's CMD.
	Cmd []string
}

// appUID and appGID are the image's user app.
const appUID, appGID = 1000, 1000

// staticBusybox returns the host's static busybox binary.
func staticBusybox() ([]byte, string, error) {
	var errs []error
	for _, p := range busyboxCandidates {
		f, err := elf.Open(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		_ = f.Close()
		if !static {
			errs = append(errs, fmt.Errorf("%s is dynamically linked", p))
			continue
		}
		b, err := os.ReadFile(p)
		return b, p, err
	}
	return nil, "", fmt.Errorf("no static busybox (install busybox-static: hack/setup.sh): %w", errors.Join(errs...))
}

// buildNettool builds testdata/nettool, static, for the image.
func buildNettool() ([]byte, error) {
	dir, err := os.MkdirTemp("", "nettool-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	out := filepath.Join(dir, "nettool")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./testdata/nettool")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building testdata/nettool: %v: %s", err, b)
	}
	return os.ReadFile(out)
}

// serveRegistry starts go-containerregistry's in-memory registry on
// 127.0.0.1 (plain HTTP) and returns it; its URL's host is the registry.
func serveRegistry() *httptest.Server {
	return httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
}

// pushTestImage builds testImage from the files on disk and pushes it to
// host/e2e/busybox:1.
func pushTestImage(host string) (testImage, error) {
	bb, bbPath, err := staticBusybox()
	if err != nil {
		return testImage{}, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	write := func(h *tar.Header, data []byte) {
		if err != nil {
			return
		}
		h.Size = int64(len(data))
		if err = tw.WriteHeader(h); err == nil && len(data) > 0 {
			_, err = tw.Write(data)
		}
	}
	dir := func(name string, mode int64, uid, gid int) {
		write(&tar.Header{Name: name + "/", Mode: mode, Uid: uid, Gid: gid, Typeflag: tar.TypeDir}, nil)
	}
	file := func(name string, mode int64, data string) {
		write(&tar.Header{Name: name, Mode: mode, Typeflag: tar.TypeReg}, []byte(data))
	}
	dir("bin", 0o755, 0, 0)
	dir("etc", 0o755, 0, 0)
	dir("home", 0o755, 0, 0)
	dir("home/app", 0o755, appUID, appGID)
	dir("root", 0o700, 0, 0)
	dir("tmp", 0o1777, 0, 0)
	write(&tar.Header{Name: "bin/busybox", Mode: 0o755, Typeflag: tar.TypeReg}, bb)
	for _, a := range busyboxApplets {
		write(&tar.Header{Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink}, nil)
	}
	nettool, ntErr := buildNettool()
	if ntErr != nil {
		return testImage{}, ntErr
	}
	write(&tar.Header{Name: "bin/nettool", Mode: 0o755, Typeflag: tar.TypeReg}, nettool)
	file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"+
		fmt.Sprintf("app:x:%d:%d::/home/app:/bin/sh\n", appUID, appGID))
	file("etc/group", 0o644, "root:x:0:\n"+fmt.Sprintf("app:x:%d:\n", appGID))
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return testImage{}, fmt.Errorf("writing the layer (busybox from %s): %w", bbPath, err)
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return testImage{}, err
	}
	ti := testImage{Ref: host + "/e2e/busybox:1", Cmd: []string{"/bin/sh", "-c", "sleep 3600"}}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			Cmd: ti.Cmd,
		},
	})
	if err != nil {
		return testImage{}, err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return testImage{}, err
	}
	ref, err := name.ParseReference(ti.Ref, name.Insecure)
	if err != nil {
		return testImage{}, err
	}
	if err := remote.Write(ref, img); err != nil {
		return testImage{}, fmt.Errorf("pushing %s: %w", ti.Ref, err)
	}
	return ti, nil
}

// registryHost is the host:port of an httptest registry.
func registryHost(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }
