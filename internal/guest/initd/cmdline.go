package initd

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Kernel command-line parameters sandbox-init reads.
const (
	// PortParam names the agent's virtio-serial port (agent.port=agent0).
	PortParam = "agent.port"
	// UpperParam names, by serial, the disk holding the writable layer
	// (sandbox.upper=upper): an ext4 filesystem the host formatted, kept
	// across boots. Without it the writable layer is a tmpfs.
	UpperParam = "sandbox.upper"
	// UpperMiBParam sizes the tmpfs writable layer in MiB
	// (sandbox.upper_mib=512); without it tmpfs's default (half the RAM)
	// applies.
	UpperMiBParam = "sandbox.upper_mib"
)

// RootConfig is how the workload's root is assembled, from the kernel
// command line.
type RootConfig struct {
	// UpperDisk is the serial of the writable layer's disk; "" for tmpfs.
	UpperDisk string
	// UpperMiB sizes the tmpfs writable layer; 0 is tmpfs's default.
	UpperMiB int
}

// ParseRootConfig reads the root's configuration from the parameters of
// ParseCmdline.
func ParseRootConfig(params map[string]string) (RootConfig, error) {
	c := RootConfig{UpperDisk: params[UpperParam]}
	if v, ok := params[UpperMiBParam]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return RootConfig{}, fmt.Errorf("%s=%q: want a positive number of MiB", UpperMiBParam, v)
		}
		c.UpperMiB = n
	}
	return c, nil
}

// ParseCmdline splits a kernel command line into its key=value parameters;
// a bare word maps to "". A later parameter overrides an earlier one, as in
// the kernel. Quoting is not supported (nothing we pass needs it).
func ParseCmdline(cmdline string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		out[k] = v
	}
	return out
}

// FindPort returns the name of the device node ("vport1p1") of the
// virtio-serial port called name, looking in sysfsRoot/class/virtio-ports.
// Without udev there is no /dev/virtio-ports/NAME symlink: the port's name
// is only in sysfs. It returns "" when no port has that name (yet).
func FindPort(sysfsRoot, name string) (string, error) {
	dir := filepath.Join(sysfsRoot, "class", "virtio-ports")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return "", nil // virtio_console not loaded (or not probed) yet
	}
	if err != nil {
		return "", fmt.Errorf("listing virtio ports: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err != nil {
			// A port is published before its name is set; look again later.
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return e.Name(), nil
		}
	}
	return "", nil
}
