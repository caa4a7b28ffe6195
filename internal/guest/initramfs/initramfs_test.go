package initramfs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

// readArchive parses a newc archive independently of the writer: every
// header field, the 4-byte alignment and the trailer are checked.
func readArchive(t *testing.T, b []byte) []Entry {
	t.Helper()
	var out []Entry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("entry at offset %d is not 4-byte aligned", off)
		}
		if len(b) < off+headerLen {
			t.Fatalf("archive ends inside a header at %d", off)
		}
		h := string(b[off : off+headerLen])
		if h[:6] != newcMagic {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(h[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatalf("field %d of header at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, namesize := field(1), field(6), field(9), field(10), field(11)
		if uid, gid := field(2), field(3); uid != 0 || gid != 0 {
			t.Fatalf("entry at %d owned by %d:%d, want root", off, uid, gid)
		}
		nameStart := off + headerLen
		name := string(b[nameStart : nameStart+int(namesize)-1])
		if b[nameStart+int(namesize)-1] != 0 {
			t.Fatalf("name %q is not NUL-terminated", name)
		}
		dataStart := pad4(nameStart + int(namesize))
		off = pad4(dataStart + int(size))
		if name == trailerName {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		e := Entry{Name: name, Mode: mode, RdevMajor: rmaj, RdevMinor: rmin}
		if size > 0 {
			e.Data = b[dataStart : dataStart+int(size)]
		}
		out = append(out, e)
	}
}

func TestWriterRoundTrips(t *testing.T) {
	g := NewWithT(t)
	in := []Entry{
		{Name: "dev", Mode: ModeDir | 0o755},
		{Name: "dev/console", Mode: ModeCharDev | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "init", Mode: ModeRegular | 0o755, Data: []byte("#!binary")},
		{Name: "a", Mode: ModeRegular | 0o644, Data: []byte("x")}, // odd sizes exercise padding
		{Name: "abc", Mode: ModeRegular | 0o644, Data: []byte("xyz12")},
		{Name: "empty", Mode: ModeRegular | 0o644},
		{Name: "bin/sh", Mode: ModeSymlink | 0o777, Data: []byte("/init")},
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range in {
		g.Expect(w.Write(e)).To(Succeed())
	}
	g.Expect(w.Close()).To(Succeed())
	g.Expect(buf.Len() % 4).To(BeZero())
	g.Expect(readArchive(t, buf.Bytes())).To(Equal(in))

	g.Expect(w.Write(in[0])).To(MatchError(errClosed), "a write after Close fails")
}

func TestWriterRejectsInvalidEntries(t *testing.T) {
	for name, e := range map[string]Entry{
		"an empty name":           {Name: "", Mode: ModeRegular},
		"the trailer's name":      {Name: trailerName, Mode: ModeRegular},
		"a directory with data":   {Name: "d", Mode: ModeDir | 0o755, Data: []byte("x")},
		"an unsupported type":     {Name: "fifo", Mode: 0o010644},
		"a mode without a type":   {Name: "f", Mode: 0o644},
		"a char device with data": {Name: "c", Mode: ModeCharDev, Data: []byte("x")},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(NewWriter(io.Discard).Write(e)).NotTo(Succeed())
		})
	}
}

// fakeModules writes a modules directory with the given modules.dep lines
// and a file for each module named there.
func fakeModules(t *testing.T, dep, builtin string) string {
	t.Helper()
	dir := t.TempDir()
	for _, l := range strings.Split(strings.TrimSpace(dep), "\n") {
		mod, _, _ := strings.Cut(l, ":")
		p := filepath.Join(dir, mod)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("module "+mod), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if builtin != "" {
		if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A modules.dep excerpt of Debian's 6.1 cloud kernel.
const cloudDep = `kernel/fs/overlayfs/overlay.ko:
kernel/drivers/acpi/button.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/input/evdev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
`

func names(ms []Module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveModules(t *testing.T) {
	dir := fakeModules(t, cloudDep, "kernel/fs/ext4/ext4.ko\n")
	for _, tc := range []struct {
		name    string
		request []string
		want    []string
		wantErr string
	}{
		{
			name:    "the default set loads in the report's order, dependencies first",
			request: DefaultModules,
			want:    []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk", "overlay", "button", "evdev"},
		},
		{
			name:    "a module named twice, or reached twice, is packed once",
			request: []string{"virtio_blk", "virtio_console", "virtio_blk"},
			want:    []string{"virtio_ring", "virtio", "virtio_blk", "virtio_console"},
		},
		{
			name:    "dashes and underscores name the same module",
			request: []string{"virtio-rng"},
			want:    []string{"virtio_ring", "virtio", "virtio_rng"},
		},
		{
			name:    "a built-in module is skipped",
			request: []string{"ext4", "overlay"},
			want:    []string{"overlay"},
		},
		{
			name:    "an unknown module is an error naming it",
			request: []string{"9p"},
			wantErr: "module 9p is neither",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			got, err := ResolveModules(dir, tc.request)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(names(got)).To(Equal(tc.want))
		})
	}
}

func TestResolveModulesRejectsCyclesAndCompressedModules(t *testing.T) {
	g := NewWithT(t)
	_, err := ResolveModules(fakeModules(t, "a.ko: b.ko\nb.ko: a.ko\n", ""), []string{"a"})
	g.Expect(err).To(MatchError(ContainSubstring("cycle")))
	_, err = ResolveModules(fakeModules(t, "a.ko.xz:\n", ""), []string{"a"})
	g.Expect(err).To(MatchError(ContainSubstring("compressed")))
	_, err = ResolveModules(t.TempDir(), []string{"a"})
	g.Expect(err).To(MatchError(ContainSubstring("depmod")))
}

func TestBuildPacksInitDevicesAndModulesInLoadOrder(t *testing.T) {
	g := NewWithT(t)
	mods := fakeModules(t, cloudDep, "")
	initBin := filepath.Join(t.TempDir(), "sandbox-init")
	g.Expect(os.WriteFile(initBin, []byte("\x7fELF fake init"), 0o700)).To(Succeed())

	dst := filepath.Join(t.TempDir(), "initrd.cpio")
	g.Expect(WriteFile(dst, Spec{Init: initBin, KernelModulesDir: mods, Modules: []string{"virtio_console", "evdev"}})).To(Succeed())
	b, err := os.ReadFile(dst)
	g.Expect(err).NotTo(HaveOccurred())

	byName := map[string]Entry{}
	var order []string
	for _, e := range readArchive(t, b) {
		g.Expect(byName).NotTo(HaveKey(e.Name), "no duplicate entries")
		byName[e.Name] = e
		order = append(order, e.Name)
	}
	g.Expect(byName["init"]).To(Equal(Entry{Name: "init", Mode: ModeRegular | 0o755, Data: []byte("\x7fELF fake init")}))
	g.Expect(byName["dev/console"]).To(Equal(Entry{Name: "dev/console", Mode: ModeCharDev | 0o600, RdevMajor: 5, RdevMinor: 1}))
	g.Expect(byName["dev/null"]).To(Equal(Entry{Name: "dev/null", Mode: ModeCharDev | 0o666, RdevMajor: 1, RdevMinor: 3}))
	for _, d := range []string{"dev", "proc", "sys", "tmp", "etc", "lib/modules"} {
		g.Expect(byName[d].Mode&modeTypeMask).To(Equal(uint32(ModeDir)), d)
	}
	g.Expect(byName["lib/modules/virtio_ring.ko"].Data).To(Equal([]byte("module kernel/drivers/virtio/virtio_ring.ko")))
	g.Expect(string(byName["etc/modules.load"].Data)).To(Equal(
		"/lib/modules/virtio_ring.ko\n/lib/modules/virtio.ko\n/lib/modules/virtio_console.ko\n/lib/modules/evdev.ko\n"))
	// Parents come before their children, as the kernel's unpacker needs.
	seen := map[string]bool{}
	for _, n := range order {
		if dir := filepath.Dir(n); dir != "." {
			g.Expect(seen).To(HaveKey(dir), fmt.Sprintf("%s before its directory", n))
		}
		seen[n] = true
	}
	st, err := os.Stat(dst)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st.Mode().Perm()).To(Equal(os.FileMode(0o644)))
}

func TestBuildPacksNetworkModulesWithoutLoadingThemAtBoot(t *testing.T) {
	g := NewWithT(t)
	mods := fakeModules(t, cloudDep, "")
	initBin := filepath.Join(t.TempDir(), "sandbox-init")
	g.Expect(os.WriteFile(initBin, []byte("init"), 0o700)).To(Succeed())
	var buf bytes.Buffer
	g.Expect(Build(&buf, Spec{Init: initBin, KernelModulesDir: mods, Modules: DefaultModules, NetworkModules: NetworkModules})).To(Succeed())
	byName := map[string]Entry{}
	for _, e := range readArchive(t, buf.Bytes()) {
		g.Expect(byName).NotTo(HaveKey(e.Name), "no duplicate entries")
		byName[e.Name] = e
	}
	for _, m := range []string{"failover", "net_failover", "virtio_net"} {
		g.Expect(byName).To(HaveKey("lib/modules/"+m+".ko"), "packed")
		g.Expect(string(byName["etc/modules.load"].Data)).NotTo(ContainSubstring(m+".ko"), "not loaded at boot")
	}
	// virtio and virtio_ring load at boot already: not listed twice.
	g.Expect(string(byName["etc/modules.network"].Data)).To(Equal(
		"/lib/modules/failover.ko\n/lib/modules/net_failover.ko\n/lib/modules/virtio_net.ko\n"))

	// Without network modules there is no list (sandbox-init then says
	// that the initramfs has none).
	buf.Reset()
	g.Expect(Build(&buf, Spec{Init: initBin, KernelModulesDir: mods, Modules: DefaultModules})).To(Succeed())
	for _, e := range readArchive(t, buf.Bytes()) {
		g.Expect(e.Name).NotTo(Equal("etc/modules.network"))
	}
	g.Expect(Build(&buf, Spec{Init: initBin, KernelModulesDir: mods, NetworkModules: []string{"9p"}})).To(
		MatchError(ContainSubstring("module 9p is neither")))
}

func TestBuildWithoutModulesReadsNoModulesDir(t *testing.T) {
	g := NewWithT(t)
	initBin := filepath.Join(t.TempDir(), "init")
	g.Expect(os.WriteFile(initBin, []byte("x"), 0o700)).To(Succeed())
	var buf bytes.Buffer
	g.Expect(Build(&buf, Spec{Init: initBin, KernelModulesDir: "/nonexistent"})).To(Succeed())
	entries := readArchive(t, buf.Bytes())
	g.Expect(entries[len(entries)-1]).To(Equal(Entry{Name: "etc/modules.load", Mode: ModeRegular | 0o644}))
	g.Expect(Build(&buf, Spec{})).To(MatchError(ContainSubstring("Init is required")))
}
