package initd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PortParam is the kernel command-line parameter naming the agent's
// virtio-serial port (agent.port=agent0).
const PortParam = "agent.port"

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
