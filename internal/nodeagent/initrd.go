package nodeagent

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/microvm-dev/sandbox-operator/internal/guest/initramfs"
)

// prepareInitrd returns the initramfs to boot: Args.InitrdPath, or one
// built once into the state directory from sandbox-init and the guest
// kernel's modules.
func prepareInitrd(args Args) (string, error) {
	if args.KernelPath == "" {
		return "", errors.New("the guest kernel path is required to run sandboxes")
	}
	if args.InitrdPath != "" {
		return args.InitrdPath, nil
	}
	if args.SandboxInitPath == "" {
		return "", errors.New("either an initrd or the sandbox-init binary is required to run sandboxes")
	}
	spec := initramfs.Spec{Init: args.SandboxInitPath}
	if args.GuestModulesDir != "" {
		spec.KernelModulesDir, spec.Modules, spec.NetworkModules = args.GuestModulesDir, initramfs.DefaultModules, initramfs.NetworkModules
	}
	dst := filepath.Join(args.StateDir, "initrd.cpio")
	if err := initramfs.WriteFile(dst, spec); err != nil {
		return "", fmt.Errorf("failed to build the initramfs: %w", err)
	}
	return dst, nil
}
