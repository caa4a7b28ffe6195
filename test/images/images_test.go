package images

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	. "github.com/onsi/gomega"
)

const (
	root = "../.."
	// The paths hack/images puts things at; the chart's nodeAgent.guest
	// values name the same.
	managerBinary   = "/manager"
	nodeAgentBinary = "/usr/local/bin/node-agent"
	guestDir        = "/opt/sandbox-operator"
	qemuBinary      = "/usr/bin/qemu-system-x86_64"
	labelVersion    = "org.opencontainers.image.version"
	labelRevision   = "org.opencontainers.image.revision"
)

// TestImages builds the images as `make images` does (hack/images/build.sh,
// into a temporary directory: the Debian rootfs and the big layers come from
// the cache, so a warm build takes seconds) and checks what is in them.
// `make test` runs `make images` first, so that a cold cache's debootstrap
// (about 8 minutes) happens outside go test's 10-minute timeout; building
// again here means the images checked are always the current tree's.
func TestImages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: debootstrap builds the agent's rootfs and the test runs its binaries under chroot")
	}
	for _, need := range []string{"bin/sandbox-init", "bin/guest/vmlinux"} {
		if _, err := os.Stat(filepath.Join(root, need)); err != nil {
			t.Skipf("%s is missing: run make build guest-kernel (make test does)", need)
		}
	}
	out := t.TempDir()
	build := exec.Command("hack/images/build.sh")
	build.Dir = root
	build.Env = append(os.Environ(), "IMAGES_OUT="+out)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("hack/images/build.sh: %v\n%s", err, b)
	}

	t.Run("the manager image runs its static binary as nonroot, with CA certificates", func(t *testing.T) {
		g := NewWithT(t)
		img := openImage(t, filepath.Join(out, "manager.tar"))
		cfg := configOf(t, img)
		g.Expect(cfg.Config.Entrypoint).To(Equal([]string{managerBinary}))
		g.Expect(cfg.Config.User).To(Equal("65532:65532"))
		expectLabels(g, cfg)

		files := extract(t, img, t.TempDir())
		passwd, err := os.ReadFile(filepath.Join(files, "etc/passwd"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(passwd)).To(ContainSubstring("nonroot:x:65532:65532:"))
		certs, err := os.ReadFile(filepath.Join(files, "etc/ssl/certs/ca-certificates.crt"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(string(certs)).To(ContainSubstring("BEGIN CERTIFICATE"))
		tmp, err := os.Stat(filepath.Join(files, "tmp"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(tmp.Mode() & (fs.ModeSticky | fs.ModePerm)).To(Equal(fs.ModeSticky | 0o777))

		// Static: it runs straight from the extracted file, with no libc.
		g.Expect(run(t, filepath.Join(files, managerBinary), "--version")).To(Equal("manager " + cfg.Config.Labels[labelVersion] + "\n"))
	})

	t.Run("the node-agent image runs QEMU 7.2, e2fsprogs and the agent from its own rootfs", func(t *testing.T) {
		g := NewWithT(t)
		img := openImage(t, filepath.Join(out, "node-agent.tar"))
		cfg := configOf(t, img)
		g.Expect(cfg.Config.Entrypoint).To(Equal([]string{nodeAgentBinary,
			"--kernel=" + guestDir + "/vmlinux", "--guest-modules=" + guestDir + "/modules",
			"--sandbox-init=" + guestDir + "/sandbox-init", "--qemu=" + qemuBinary}))
		g.Expect(cfg.Config.User).To(Equal("0:0"))
		g.Expect(cfg.Config.Env).To(ContainElement(ContainSubstring("/usr/sbin")), "the agent runs mkfs.ext4 from PATH")
		expectLabels(g, cfg)
		release, err := os.ReadFile(filepath.Join(root, "bin/guest/version"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cfg.Config.Labels).To(HaveKeyWithValue("dev.microvm.sandbox.guest-kernel", strings.TrimSpace(string(release))))

		rootfs := extract(t, img, t.TempDir())
		// The guest kernel is the ELF vmlinux; the modules the initramfs
		// packs are there with their modules.dep.
		vmlinux, err := os.ReadFile(filepath.Join(rootfs, guestDir, "vmlinux"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(vmlinux[:4]).To(Equal([]byte("\x7fELF")))
		dep, err := os.ReadFile(filepath.Join(rootfs, guestDir, "modules/modules.dep"))
		g.Expect(err).NotTo(HaveOccurred())
		for _, m := range []string{"virtio_blk", "virtio_console", "virtio_net", "overlay"} {
			ko := moduleFile(dep, m)
			g.Expect(ko).NotTo(BeEmpty(), "%s in modules.dep", m)
			g.Expect(filepath.Join(rootfs, guestDir, "modules", ko)).To(BeARegularFile())
		}
		g.Expect(filepath.Join(rootfs, guestDir, "sandbox-init")).To(BeARegularFile())
		// Docs and apt's lists are trimmed.
		g.Expect(filepath.Join(rootfs, "usr/share/doc/qemu-system-x86")).NotTo(BeAnExistingFile())

		// Under chroot, so that each binary loads the image's libraries.
		g.Expect(chroot(t, rootfs, qemuBinary, "--version")).To(MatchRegexp(`^QEMU emulator version 7\.2\.\d+`))
		g.Expect(chroot(t, rootfs, qemuBinary, "-machine", "help")).To(MatchRegexp(`(?m)^microvm\s`))
		g.Expect(chroot(t, rootfs, "/usr/sbin/mkfs.ext4", "-V")).To(MatchRegexp(`mke2fs 1\.4\d`))
		g.Expect(chroot(t, rootfs, nodeAgentBinary, "--version")).To(Equal("node-agent " + cfg.Config.Labels[labelVersion] + "\n"))
	})
}

// openImage reads the tarball both ways a user loads it: as the OCI image
// layout (skopeo, podman, ctr import) and through Docker's manifest.json
// (docker load); both must name the same image.
func openImage(t *testing.T, tarPath string) v1.Image {
	t.Helper()
	g := NewWithT(t)
	dir := t.TempDir()
	untar(t, tarPath, dir)
	idx, err := layout.ImageIndexFromPath(dir)
	g.Expect(err).NotTo(HaveOccurred())
	im, err := idx.IndexManifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(im.Manifests).To(HaveLen(1))
	desc := im.Manifests[0]
	g.Expect(desc.MediaType).To(Equal(types.OCIManifestSchema1))
	g.Expect(desc.Annotations).To(HaveKey("org.opencontainers.image.ref.name"))
	g.Expect(desc.Annotations).To(HaveKeyWithValue("io.containerd.image.name", HaveSuffix(":"+desc.Annotations["org.opencontainers.image.ref.name"])))
	img, err := idx.Image(desc.Digest)
	g.Expect(err).NotTo(HaveOccurred())
	m, err := img.Manifest()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(m.Config.MediaType).To(Equal(types.OCIConfigJSON))
	for _, l := range m.Layers {
		g.Expect(l.MediaType).To(Equal(types.OCILayer))
	}

	docker, err := tarball.ImageFromPath(tarPath, nil)
	g.Expect(err).NotTo(HaveOccurred(), "docker load's manifest.json")
	name, err := img.ConfigName()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(docker.ConfigName()).To(Equal(name))
	return img
}

func configOf(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cfg, err := img.ConfigFile()
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	return cfg
}

func expectLabels(g Gomega, cfg *v1.ConfigFile) {
	g.Expect(cfg.OS).To(Equal("linux"))
	g.Expect(cfg.Architecture).To(Equal("amd64"))
	g.Expect(cfg.Config.Labels).To(HaveKeyWithValue(labelVersion, Not(BeEmpty())))
	g.Expect(cfg.Config.Labels).To(HaveKeyWithValue(labelRevision, MatchRegexp(`^[0-9a-f]{40}$`)))
	g.Expect(cfg.Config.Labels).To(HaveKeyWithValue("org.opencontainers.image.source", "https://github.com/microvm-dev/sandbox-operator"))
	g.Expect(cfg.History).To(HaveLen(len(cfg.RootFS.DiffIDs)))
}

// moduleFile finds a module's file in modules.dep ("kernel/…/name.ko:" lines).
func moduleFile(dep []byte, name string) string {
	for line := range strings.SplitSeq(string(dep), "\n") {
		f, _, _ := strings.Cut(line, ":")
		base := path.Base(f)
		if i := strings.Index(base, ".ko"); i >= 0 && strings.ReplaceAll(base[:i], "-", "_") == name {
			return f
		}
	}
	return ""
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	b, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", bin, args, err, b)
	}
	return string(b)
}

func chroot(t *testing.T, rootfs string, args ...string) string {
	t.Helper()
	cmd := exec.Command("chroot", append([]string{rootfs}, args...)...)
	// Only what the image's config would give the process.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s %v: %v\n%s", rootfs, args, err, b)
	}
	return string(b)
}

// untar unpacks the image archive (regular files and directories only).
func untar(t *testing.T, tarPath, dir string) {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = r.MkdirAll(h.Name, 0o755)
		case tar.TypeReg:
			var w *os.File
			if w, err = r.Create(h.Name); err == nil {
				_, err = io.Copy(w, tr)
				err = errors.Join(err, w.Close())
			}
		default:
			t.Fatalf("%s: unexpected entry %q of type %c in an image archive", tarPath, h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// extract flattens the image's layers (mutate.Extract applies whiteouts)
// into dir, keeping modes, owners and links, confined to dir by os.Root.
func extract(t *testing.T, img v1.Image, dir string) string {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := extractEntry(r, h, tr); err != nil {
			t.Fatalf("extracting %s: %v", h.Name, err)
		}
	}
}

func extractEntry(r *os.Root, h *tar.Header, body io.Reader) error {
	name := path.Clean(strings.TrimPrefix(h.Name, "/"))
	if name == "." {
		return nil
	}
	if dir := path.Dir(name); dir != "." {
		if err := r.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	mode := h.FileInfo().Mode()
	switch h.Typeflag {
	case tar.TypeDir:
		if err := r.MkdirAll(name, 0o755); err != nil {
			return err
		}
	case tar.TypeReg:
		w, err := r.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(w, body)
		if err := errors.Join(err, w.Close()); err != nil {
			return err
		}
	case tar.TypeSymlink:
		return errors.Join(r.Symlink(h.Linkname, name), r.Lchown(name, h.Uid, h.Gid))
	case tar.TypeLink:
		return r.Link(path.Clean(strings.TrimPrefix(h.Linkname, "/")), name)
	default:
		// Device nodes and FIFOs are the runtime's; the images carry none.
		return nil
	}
	return errors.Join(r.Lchown(name, h.Uid, h.Gid), r.Chmod(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)))
}
