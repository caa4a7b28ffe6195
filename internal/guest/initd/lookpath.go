package initd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DefaultPath is the PATH used to find the main process when its
// environment has none (the OCI runtimes' default).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// LookPath resolves file the way execvp would inside root, using the PATH
// of env (the last PATH= entry; DefaultPath when there is none). os/exec
// cannot do it: it searches the initramfs's PATH, not the workload's. A
// name with a '/' is returned as it is. The result is a path inside root.
//
// A candidate that is a symbolic link is accepted without following it:
// an absolute link target is only meaningful inside root, where the kernel
// resolves it at exec.
func LookPath(root, file string, env []string) (string, error) {
	if file == "" {
		return "", errors.New("empty command")
	}
	if strings.Contains(file, "/") {
		return file, nil
	}
	p := DefaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			p = v
		}
	}
	for _, dir := range filepath.SplitList(p) {
		if dir == "" || !path.IsAbs(dir) {
			// Relative PATH entries depend on the working directory: skip.
			continue
		}
		cand := path.Join(dir, file)
		fi, err := os.Lstat(filepath.Join(root, cand))
		if err != nil {
			continue
		}
		if fi.Mode()&fs.ModeSymlink != 0 || (fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0) {
			return cand, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %q", file, p)
}
