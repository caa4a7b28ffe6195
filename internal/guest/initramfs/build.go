package initramfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The layout sandbox-init relies on.
const (
	// InitPath is where the kernel looks for the first process.
	InitPath = "/init"
	// ModulesLoadPath lists the modules to load, one absolute path a line,
	// in load order.
	ModulesLoadPath = "/etc/modules.load"
	// NetworkModulesLoadPath lists the network modules (Spec.NetworkModules)
	// in the format of ModulesLoadPath; absent when there are none.
	NetworkModulesLoadPath = "/etc/modules.network"
	// ModulesDir holds the packed modules, flat, as <name>.ko.
	ModulesDir = "/lib/modules"
)

// Spec describes an initramfs.
type Spec struct {
	// Init is the host path of the sandbox-init binary (static), packed as
	// /init.
	Init string
	// KernelModulesDir is the guest kernel's modules directory on the host
	// (lib/modules/<release>, with modules.dep).
	KernelModulesDir string
	// Modules names the modules to pack and load; their dependencies are
	// added. Empty means none (and KernelModulesDir is not read).
	Modules []string
	// NetworkModules names modules to pack without loading them at boot
	// (normally NetworkModules): sandbox-init loads them, from
	// NetworkModulesLoadPath, when a Start configures a network. Those
	// of their dependencies that Modules loads already are not listed
	// again.
	NetworkModules []string
}

// Build writes the initramfs described by spec to w.
func Build(w io.Writer, spec Spec) error {
	if spec.Init == "" {
		return errors.New("initramfs: Spec.Init is required")
	}
	initBin, err := os.ReadFile(spec.Init)
	if err != nil {
		return fmt.Errorf("initramfs: reading init: %w", err)
	}
	var mods, netMods []Module
	if len(spec.Modules) > 0 {
		if mods, err = ResolveModules(spec.KernelModulesDir, spec.Modules); err != nil {
			return err
		}
	}
	if len(spec.NetworkModules) > 0 {
		// Resolved together with the boot modules, for the load order;
		// what boot loads already is left out.
		all, err := ResolveModules(spec.KernelModulesDir, append(append([]string{}, spec.Modules...), spec.NetworkModules...))
		if err != nil {
			return err
		}
		netMods = all[len(mods):]
	}

	a := NewWriter(w)
	entries := []Entry{
		{Name: "dev", Mode: ModeDir | 0o755},
		// Without dev/console the kernel opens no fds 0-2 for /init (devtmpfs
		// is not mounted yet) and every log line is lost.
		{Name: "dev/console", Mode: ModeCharDev | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "dev/null", Mode: ModeCharDev | 0o666, RdevMajor: 1, RdevMinor: 3},
		{Name: "proc", Mode: ModeDir | 0o555},
		{Name: "sys", Mode: ModeDir | 0o555},
		{Name: "tmp", Mode: ModeDir | 0o1777},
		{Name: "run", Mode: ModeDir | 0o755},
		{Name: "mnt", Mode: ModeDir | 0o755},
		{Name: "etc", Mode: ModeDir | 0o755},
		{Name: "lib", Mode: ModeDir | 0o755},
		{Name: strings.TrimPrefix(ModulesDir, "/"), Mode: ModeDir | 0o755},
		{Name: strings.TrimPrefix(InitPath, "/"), Mode: ModeRegular | 0o755, Data: initBin},
	}
	for _, e := range entries {
		if err := a.Write(e); err != nil {
			return err
		}
	}
	if len(netMods) > 0 {
		netLoad, err := writeModules(a, spec.KernelModulesDir, netMods)
		if err != nil {
			return err
		}
		if err := a.Write(Entry{Name: strings.TrimPrefix(NetworkModulesLoadPath, "/"), Mode: ModeRegular | 0o644, Data: netLoad}); err != nil {
			return err
		}
	}
	load, err := writeModules(a, spec.KernelModulesDir, mods)
	if err != nil {
		return err
	}
	if err := a.Write(Entry{Name: strings.TrimPrefix(ModulesLoadPath, "/"), Mode: ModeRegular | 0o644, Data: load}); err != nil {
		return err
	}
	return a.Close()
}

// writeModules packs mods into ModulesDir and returns their load list.
func writeModules(a *Writer, modulesDir string, mods []Module) ([]byte, error) {
	var load strings.Builder
	for _, m := range mods {
		// Read and write one module at a time: a kernel's worth of modules is
		// never held in memory at once.
		data, err := os.ReadFile(filepath.Join(modulesDir, m.Path))
		if err != nil {
			return nil, fmt.Errorf("initramfs: reading module %s: %w", m.Name, err)
		}
		p := path.Join(ModulesDir, m.Name+".ko")
		if err := a.Write(Entry{Name: strings.TrimPrefix(p, "/"), Mode: ModeRegular | 0o644, Data: data}); err != nil {
			return nil, err
		}
		load.WriteString(p + "\n")
	}
	return []byte(load.String()), nil
}

// WriteFile builds the initramfs into the file at dst (created or
// truncated, mode 0644), via a temporary file renamed into place, so that a
// reader never sees a partial archive.
func WriteFile(dst string, spec Spec) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err = Build(bw, spec); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}
