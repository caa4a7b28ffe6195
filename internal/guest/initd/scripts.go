package initd

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// DefaultShell interprets scripts that have no #! line when Start.Shell is
// empty.
const DefaultShell = "/bin/sh"

// WriteScripts writes each script to protocol.ScriptsDir inside root under
// its name, mode 0755, so that the workload can call it by name (the host
// puts ScriptsDir first on PATH). A script that does not start with "#!"
// gets "#!<shell>\n" in front: exec(2) refuses a file without one, and
// only a shell would fall back to running it itself.
func WriteScripts(root, shell string, scripts map[string]string) error {
	if len(scripts) == 0 {
		return nil
	}
	if shell == "" {
		shell = DefaultShell
	}
	if !path.IsAbs(shell) || strings.ContainsAny(shell, "\n\x00") {
		return fmt.Errorf("scripts: shell %q is not an absolute path", shell)
	}
	names := make([]string, 0, len(scripts))
	for name := range scripts {
		if err := validFileName(name, false); err != nil {
			return fmt.Errorf("script %q: %w", name, err)
		}
		names = append(names, name)
	}
	dir, err := mkdirAllInRoot(root, protocol.ScriptsDir, defaultDirMode)
	if err != nil {
		return fmt.Errorf("scripts: %w", err)
	}
	slices.Sort(names) // a deterministic first failure
	for _, name := range names {
		body := scripts[name]
		if !strings.HasPrefix(body, "#!") {
			body = "#!" + shell + "\n" + body
		}
		if err := replaceFile(path.Join(dir, name), []byte(body), 0o755); err != nil {
			return fmt.Errorf("script %q: %w", name, err)
		}
	}
	return nil
}

// validFileName checks a name the host gives a file: a script's (a single
// component, nested false) or a Files mount's (a relative path, nested
// true). Neither may be absolute, contain "..", "." or empty components,
// or a NUL byte: the file must land where the name says, inside its
// directory.
func validFileName(name string, nested bool) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if strings.ContainsRune(name, 0) {
		return fmt.Errorf("name contains a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return fmt.Errorf("name is absolute")
	}
	if !nested && strings.Contains(name, "/") {
		return fmt.Errorf("name contains '/'")
	}
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".", "..":
			return fmt.Errorf("name has a %q component", c)
		}
	}
	return nil
}
