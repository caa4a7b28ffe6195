package initramfs

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DefaultModules are the modules a microVM guest on Debian's cloud kernel
// loads (their dependencies are added by ResolveModules). Nothing virtio is
// built into that kernel:
//
//   - virtio_mmio: the bus of QEMU's microvm machine (found through ACPI);
//   - virtio_console: the virtio-serial agent port;
//   - virtio_blk: the root disk;
//   - overlay: a writable layer over the read-only root;
//   - button, evdev: the ACPI power button, so that QMP system_powerdown
//     reaches sandbox-init as a KEY_POWER event.
var DefaultModules = []string{"virtio_mmio", "virtio_console", "virtio_blk", "overlay", "button", "evdev"}

// NetworkModules are the modules a guest with a NIC (vmm.Config.Network)
// needs on top of DefaultModules: virtio_net (its dependencies, failover
// and net_failover, come from modules.dep). They are packed with
// Spec.NetworkModules but not loaded at boot: sandbox-init loads them for
// a Start with a Network, so that a VM without a NIC does not pay for
// them (each module load costs milliseconds under TCG).
var NetworkModules = []string{"virtio_net"}

// moduleName normalises a module's name the way the kernel does: file names
// may use '-' where the module name has '_'.
func moduleName(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// Module is a kernel module to pack.
type Module struct {
	// Name is the module's name ("virtio_ring").
	Name string
	// Path is its file, relative to the modules directory
	// ("kernel/drivers/virtio/virtio_ring.ko").
	Path string
}

// ResolveModules returns the modules named, with everything they depend on,
// in an order they can be loaded in: each module after all of its
// dependencies. Dependencies come from modulesDir/modules.dep (written by
// depmod); modules built into the kernel (modulesDir/modules.builtin) are
// dropped. Soft dependencies are not in modules.dep and must be named.
func ResolveModules(modulesDir string, names []string) ([]Module, error) {
	deps, err := readModulesDep(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin, err := readBuiltin(filepath.Join(modulesDir, "modules.builtin"))
	if err != nil {
		return nil, err
	}
	var (
		out  []Module
		done = map[string]bool{}
		// visiting catches a dependency cycle, which depmod refuses to write
		// but a hand-edited file could hold.
		visiting = map[string]bool{}
	)
	var visit func(name string) error
	visit = func(name string) error {
		if done[name] || builtin[name] {
			return nil
		}
		if visiting[name] {
			return fmt.Errorf("initramfs: module dependency cycle at %s", name)
		}
		m, ok := deps[name]
		if !ok {
			return fmt.Errorf("initramfs: module %s is neither in %s/modules.dep nor built in", name, modulesDir)
		}
		if !strings.HasSuffix(m.path, ".ko") {
			// finit_module takes compressed modules only with a flag and a
			// kernel built for it; Debian 12's are uncompressed.
			return fmt.Errorf("initramfs: module %s is compressed (%s); only .ko is supported", name, m.path)
		}
		visiting[name] = true
		for _, d := range m.deps {
			if err := visit(moduleName(d)); err != nil {
				return err
			}
		}
		visiting[name] = false
		done[name] = true
		out = append(out, Module{Name: name, Path: m.path})
		return nil
	}
	for _, n := range names {
		if err := visit(moduleName(n)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

type depEntry struct {
	path string
	deps []string
}

// readModulesDep parses depmod's "path: dep dep ..." lines, keyed by name.
func readModulesDep(file string) (map[string]depEntry, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("initramfs: reading modules.dep (run depmod -b): %w", err)
	}
	defer func() { _ = f.Close() }()
	out := map[string]depEntry{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		out[moduleName(mod)] = depEntry{path: mod, deps: strings.Fields(rest)}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("initramfs: reading %s: %w", file, err)
	}
	return out, nil
}

// readBuiltin returns the names in modules.builtin; a missing file means
// none are built in.
func readBuiltin(file string) (map[string]bool, error) {
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	out := map[string]bool{}
	for _, l := range strings.Fields(string(b)) {
		out[moduleName(l)] = true
	}
	return out, nil
}
