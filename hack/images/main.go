package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
)

// Paths inside the images. The chart's nodeAgent.guest values and the
// agent's default flags (its entrypoint) point at them.
const (
	ManagerBinary     = "/manager"
	NodeAgentBinary   = "/usr/local/bin/node-agent"
	GuestKernel       = "/opt/sandbox-operator/vmlinux"
	GuestModules      = "/opt/sandbox-operator/modules"
	SandboxInitBinary = "/opt/sandbox-operator/sandbox-init"
	QEMUBinary        = "/usr/bin/qemu-system-x86_64"
)

const (
	// nonroot is the manager's user and group, distroless' "nonroot".
	nonroot = 65532
	// layerFormat is part of the cached layers' names: bump it when the way
	// layers are written changes.
	layerFormat = "layer-v1"
	source      = "https://github.com/microvm-dev/sandbox-operator"
	// pathEnv includes the sbin directories: the agent runs mkfs.ext4,
	// e2fsck and debugfs from /usr/sbin.
	pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// LabelGuestKernel names the guest kernel release in the agent image.
	LabelGuestKernel = "dev.microvm.sandbox.guest-kernel"
)

type options struct {
	out, rootfs, layerCache                string
	manager, nodeAgent, sandboxInit, guest string
	repository, tag, revision              string
	created                                int64
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "bin/images", "Directory the image tarballs are written to.")
	flag.StringVar(&o.rootfs, "rootfs", "", "The node-agent image's Debian rootfs (debootstrap; its compressed layer is cached in the directory above it).")
	flag.StringVar(&o.layerCache, "layer-cache", "", "Directory for the compressed guest-kernel layer, keyed by the kernel and the module list (empty: not cached).")
	flag.StringVar(&o.manager, "manager", "", "The static manager binary.")
	flag.StringVar(&o.nodeAgent, "node-agent", "", "The static node-agent binary.")
	flag.StringVar(&o.sandboxInit, "sandbox-init", "bin/sandbox-init", "The static sandbox-init binary.")
	flag.StringVar(&o.guest, "guest", "bin/guest", "The guest kernel directory of make guest-kernel (vmlinux, modules, version).")
	flag.StringVar(&o.repository, "repository", "sandbox-operator", "Repository prefix of the images' names (<repository>/manager, <repository>/node-agent).")
	flag.StringVar(&o.tag, "tag", "", "Tag of both images (default: the binaries' version, with characters a tag may not hold replaced by -).")
	flag.StringVar(&o.revision, "revision", "unknown", "The VCS revision, for the org.opencontainers.image.revision label.")
	flag.Int64Var(&o.created, "created", 0, "Creation time (Unix seconds; SOURCE_DATE_EPOCH): the config's created time, and the latest file time in the binaries' layers.")
	flag.Parse()
	for name, v := range map[string]string{"-rootfs": o.rootfs, "-manager": o.manager, "-node-agent": o.nodeAgent} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "images: %s is required\n", name)
			os.Exit(2)
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	created := time.Unix(o.created, 0).UTC()
	version, err := binaryVersion(o.nodeAgent, "node-agent")
	if err != nil {
		return err
	}
	if mv, err := binaryVersion(o.manager, "manager"); err != nil {
		return err
	} else if mv != version {
		return fmt.Errorf("the manager (%s) and the node agent (%s) come from different trees", mv, version)
	}
	tag := o.tag
	if tag == "" {
		tag = TagFor(version)
	}
	kernelRelease, err := os.ReadFile(filepath.Join(o.guest, "version"))
	if err != nil {
		return fmt.Errorf("failed to read the guest kernel's release: %w", err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(o.out, ".layers-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }()

	labels := func(title, description string) map[string]string {
		return map[string]string{
			"org.opencontainers.image.title":       title,
			"org.opencontainers.image.description": description,
			"org.opencontainers.image.version":     version,
			"org.opencontainers.image.revision":    o.revision,
			"org.opencontainers.image.source":      source,
			"org.opencontainers.image.created":     created.Format(time.RFC3339),
		}
	}

	// The manager: a static binary on an empty base, as distroless/static.
	managerBase, err := newLayer(filepath.Join(tmp, "manager-base.tar.gz"), created, func(w *layerWriter) error {
		return w.managerBase(filepath.Join(o.rootfs, "etc/ssl/certs/ca-certificates.crt"))
	})
	if err != nil {
		return fmt.Errorf("failed to write the manager's base layer: %w", err)
	}
	managerBin, err := newLayer(filepath.Join(tmp, "manager.tar.gz"), created, func(w *layerWriter) error {
		return w.copyFile(ManagerBinary, o.manager, 0o755)
	})
	if err != nil {
		return fmt.Errorf("failed to write the manager's layer: %w", err)
	}
	manager, err := newImage(created, v1.Config{
		Entrypoint: []string{ManagerBinary},
		User:       fmt.Sprintf("%d:%d", nonroot, nonroot),
		WorkingDir: "/",
		Env:        []string{pathEnv},
		Labels:     labels("sandbox-operator manager", "Places Sandboxes on SandboxNodes, drives their lifecycle and serves the access API."),
	},
		addendum{managerBase, "CA certificates, /etc/passwd and /etc/group with nonroot (65532), /tmp"},
		addendum{managerBin, "the static manager at " + ManagerBinary},
	)
	if err != nil {
		return err
	}
	if err := writeArchive(filepath.Join(o.out, "manager.tar"), o.repository+"/manager", tag, manager); err != nil {
		return err
	}

	// The node agent: Debian with QEMU and e2fsprogs, the guest kernel, then
	// the binaries (the layer that changes with every commit, last).
	rootfsLayer, err := cachedLayer(filepath.Join(filepath.Dir(o.rootfs), layerFormat+".tar.gz"), time.Time{}, func(w *layerWriter) error {
		return w.addTree(o.rootfs, "")
	})
	if err != nil {
		return fmt.Errorf("failed to write the Debian layer: %w", err)
	}
	guestLayer, err := guestKernelLayer(o, tmp)
	if err != nil {
		return fmt.Errorf("failed to write the guest kernel layer: %w", err)
	}
	agentBin, err := newLayer(filepath.Join(tmp, "node-agent.tar.gz"), created, func(w *layerWriter) error {
		return errors.Join(
			w.copyFile(NodeAgentBinary, o.nodeAgent, 0o755),
			w.copyFile(SandboxInitBinary, o.sandboxInit, 0o755))
	})
	if err != nil {
		return fmt.Errorf("failed to write the node agent's layer: %w", err)
	}
	agentLabels := labels("sandbox-operator node-agent", "Runs the Sandboxes placed on its node as QEMU microVMs.")
	agentLabels[LabelGuestKernel] = strings.TrimSpace(string(kernelRelease))
	agent, err := newImage(created, v1.Config{
		// The defaults point at the image's own guest kernel, modules,
		// sandbox-init and QEMU; the chart passes the same paths.
		Entrypoint: []string{NodeAgentBinary,
			"--kernel=" + GuestKernel, "--guest-modules=" + GuestModules,
			"--sandbox-init=" + SandboxInitBinary, "--qemu=" + QEMUBinary},
		// Root: the agent opens /dev/kvm, creates cgroups and mounts; the
		// chart runs it privileged on purpose (docs/install.md).
		User:       "0:0",
		WorkingDir: "/",
		Env:        []string{pathEnv},
		Labels:     agentLabels,
	},
		addendum{rootfsLayer, "debootstrap --variant=minbase --include=qemu-system-x86,e2fsprogs,ca-certificates bookworm (trimmed)"},
		addendum{guestLayer, "the guest kernel " + agentLabels[LabelGuestKernel] + " and the modules the initramfs packs, in /opt/sandbox-operator"},
		addendum{agentBin, "node-agent at " + NodeAgentBinary + ", sandbox-init at " + SandboxInitBinary},
	)
	if err != nil {
		return err
	}
	return writeArchive(filepath.Join(o.out, "node-agent.tar"), o.repository+"/node-agent", tag, agent)
}

// guestKernelLayer holds vmlinux and, of the modules directory, only the
// modules the agent packs into its initramfs (initramfs.DefaultModules and
// NetworkModules with their dependencies) plus depmod's index files: 1 MiB
// instead of the cloud kernel's 90 MiB. The agent reads no other module; if
// it ever takes a module list from a flag, ship the whole directory.
func guestKernelLayer(o options, tmp string) (v1.Layer, error) {
	modulesDir, err := filepath.EvalSymlinks(filepath.Join(o.guest, "modules"))
	if err != nil {
		return nil, err
	}
	vmlinux, err := filepath.EvalSymlinks(filepath.Join(o.guest, "vmlinux"))
	if err != nil {
		return nil, err
	}
	modules, err := initramfs.ResolveModules(modulesDir, slices.Concat(initramfs.DefaultModules, initramfs.NetworkModules))
	if err != nil {
		return nil, err
	}
	files := []string{}
	for _, m := range modules {
		files = append(files, m.Path)
	}
	entries, err := os.ReadDir(modulesDir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			files = append(files, e.Name())
		}
	}
	slices.Sort(files)
	write := func(w *layerWriter) error {
		if err := w.copyFile(GuestKernel, vmlinux, 0o644); err != nil {
			return err
		}
		for _, f := range files {
			if err := w.copyFile(path.Join(GuestModules, f), filepath.Join(modulesDir, f), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	if o.layerCache == "" {
		return newLayer(filepath.Join(tmp, "guest.tar.gz"), time.Time{}, write)
	}
	stamp, err := os.ReadFile(filepath.Join(o.guest, ".stamp"))
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	_, _ = fmt.Fprintf(h, "%s\n%s\n%s\n", layerFormat, stamp, strings.Join(files, "\n"))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	return cachedLayer(filepath.Join(o.layerCache, "guest-kernel-"+key+".tar.gz"), time.Time{}, write)
}

// binaryVersion runs `<bin> --version`, which prints "<name> <version>".
func binaryVersion(bin, name string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("failed to run %s --version: %w", bin, err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || f[0] != name {
		return "", fmt.Errorf("%s --version printed %q, not %q", bin, out, name+" <version>")
	}
	return f[1], nil
}

var notInTag = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// TagFor turns a version into an image tag: a tag holds [A-Za-z0-9_.-],
// at most 128 of them, so a Go pseudo-version's "+dirty" becomes "-dirty".
func TagFor(version string) string {
	t := notInTag.ReplaceAllString(version, "-")
	if len(t) > 128 {
		t = t[:128]
	}
	return t
}

type addendum struct {
	layer     v1.Layer
	createdBy string
}

// newImage is an OCI image (OCI manifest and config media types) of the
// layers, for linux/amd64, with cfg and one history entry per layer.
func newImage(created time.Time, cfg v1.Config, layers ...addendum) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(layers))
	for _, l := range layers {
		adds = append(adds, mutate.Addendum{
			Layer:     l.layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: l.createdBy, Comment: "hack/images"},
		})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// writeArchive writes img as a tar of an OCI image layout, tagged in
// index.json both the OCI way (ref.name: the tag) and containerd's (the full
// name, which ctr import and kind load use), plus Docker's manifest.json so
// that docker load before 25 reads it too.
func writeArchive(dst, repository, tag string, img v1.Image) error {
	dir, err := os.MkdirTemp(filepath.Dir(dst), ".layout-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	fullName := repository + ":" + tag
	if first, _, ok := strings.Cut(repository, "/"); !ok || !strings.ContainsAny(first, ".:") && first != "localhost" {
		fullName = "docker.io/" + fullName
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag,
		"io.containerd.image.name":          fullName,
	})); err != nil {
		return fmt.Errorf("failed to write the image layout of %s: %w", repository, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	blob := func(d v1.Hash) string { return path.Join("blobs", d.Algorithm, d.Hex) }
	dm := []map[string]any{{"Config": blob(m.Config.Digest), "RepoTags": []string{repository + ":" + tag}, "Layers": []string{}}}
	for _, l := range m.Layers {
		dm[0]["Layers"] = append(dm[0]["Layers"].([]string), blob(l.Digest))
	}
	raw, err := json.Marshal(dm)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), raw, 0o644); err != nil {
		return err
	}
	return tarDir(dir, dst)
}

// tarDir writes the files under dir, sorted, into the tar file dst (written
// aside and renamed into place, so a reader never sees half a tarball).
func tarDir(dir, dst string) error {
	f, err := os.CreateTemp(filepath.Dir(dst), ".tar-")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(f.Name()) }()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg, Size: info.Size()}
		if d.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = h.Name+"/", 0o755, tar.TypeDir, 0
			return tw.WriteHeader(h)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer func() { _ = src.Close() }()
		_, err = io.Copy(tw, src)
		return err
	})
	if err = errors.Join(err, tw.Close(), f.Chmod(0o644), f.Close()); err != nil {
		return fmt.Errorf("failed to write %s: %w", dst, err)
	}
	return os.Rename(f.Name(), dst)
}

// cachedLayer returns the layer compressed at file, writing it first if it
// is not there yet.
func cachedLayer(file string, clamp time.Time, write func(*layerWriter) error) (v1.Layer, error) {
	if _, err := os.Stat(file); err == nil {
		return tarball.LayerFromFile(file, tarball.WithMediaType(types.OCILayer))
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".layer-")
	if err != nil {
		return nil, err
	}
	_ = tmp.Close()
	defer func() { _ = os.Remove(tmp.Name()) }()
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return nil, err
	}
	if _, err := newLayer(tmp.Name(), clamp, write); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(file, tarball.WithMediaType(types.OCILayer))
}

// newLayer writes a gzip-compressed layer to file and opens it as a layer.
// File times later than clamp are set to it (zero: kept as they are).
func newLayer(file string, clamp time.Time, write func(*layerWriter) error) (v1.Layer, error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	zw := gzip.NewWriter(f)
	w := &layerWriter{tw: tar.NewWriter(zw), clamp: clamp, dirs: map[string]bool{}, links: map[[2]uint64]string{}}
	if err := errors.Join(write(w), w.tw.Close(), zw.Close(), f.Close()); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(file, tarball.WithMediaType(types.OCILayer))
}

// layerWriter writes one layer's tar entries.
type layerWriter struct {
	tw    *tar.Writer
	clamp time.Time
	// dirs are the directories written, so that parents are written once
	// and before what they hold.
	dirs map[string]bool
	// links maps a (device, inode) already written to its name, to write
	// hard links as links.
	links map[[2]uint64]string
}

func (w *layerWriter) writeHeader(h *tar.Header) error {
	// The host's user and group names mean nothing in the image; the
	// numeric ids are what counts.
	h.Uname, h.Gname = "", ""
	h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
	if !w.clamp.IsZero() && h.ModTime.After(w.clamp) {
		h.ModTime = w.clamp
	}
	return w.tw.WriteHeader(h)
}

// parents writes the directories above name that are not written yet, as
// root-owned 0755 directories.
func (w *layerWriter) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." || dir == "/" || w.dirs[dir] {
		return nil
	}
	if err := w.parents(dir); err != nil {
		return err
	}
	return w.dir(dir, 0o755, 0, 0)
}

func (w *layerWriter) dir(name string, mode int64, uid, gid int) error {
	name = strings.TrimPrefix(name, "/")
	w.dirs[name] = true
	return w.writeHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: gid, ModTime: w.clamp})
}

func (w *layerWriter) bytes(name string, data []byte, mode int64) error {
	name = strings.TrimPrefix(name, "/")
	if err := w.parents(name); err != nil {
		return err
	}
	if err := w.writeHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: w.clamp}); err != nil {
		return err
	}
	_, err := w.tw.Write(data)
	return err
}

// copyFile writes the file src at name, root-owned with mode.
func (w *layerWriter) copyFile(name, src string, mode int64) error {
	name = strings.TrimPrefix(name, "/")
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if err := w.parents(name); err != nil {
		return err
	}
	if err := w.writeHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: info.Size(), ModTime: info.ModTime()}); err != nil {
		return err
	}
	_, err = io.Copy(w.tw, f)
	return err
}

// managerBase is distroless/static's useful part: CA certificates for TLS to
// the API server and registries, passwd and group entries for root and
// nonroot (so that the 65532 user has a name and a home), and /tmp.
func (w *layerWriter) managerBase(caCerts string) error {
	return errors.Join(
		w.bytes("etc/passwd", []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"), 0o644),
		w.bytes("etc/group", []byte("root:x:0:\nnonroot:x:65532:\n"), 0o644),
		w.copyFile("etc/ssl/certs/ca-certificates.crt", caCerts, 0o644),
		w.dir("home", 0o755, 0, 0),
		w.dir("home/nonroot", 0o700, nonroot, nonroot),
		w.dir("root", 0o700, 0, 0),
		w.dir("tmp", 0o1777, 0, 0),
	)
}

// addTree writes the tree under src at dst (relative; "" is the root),
// keeping modes, owners, symbolic and hard links. Sockets are skipped (a
// rootfs has none worth keeping); device nodes are the runtime's business
// and build.sh empties /dev.
func (w *layerWriter) addTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := path.Join(dst, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		h.Name = name
		if d.IsDir() {
			h.Name += "/"
			w.dirs[name] = true
			return w.writeHeader(h)
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, seen := w.links[key]; seen {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				return w.writeHeader(h)
			}
			w.links[key] = name
		}
		if err := w.writeHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		_, err = io.Copy(w.tw, f)
		return err
	})
}
