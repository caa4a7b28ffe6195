package plugin

import (
	"fmt"
	"strings"
)

// target is a sandbox, and a path inside it for the file commands:
// [NAMESPACE/]SANDBOX[:PATH], as kubectl cp writes pods. An empty
// Namespace means the one of the flags or the kubeconfig's context.
type target struct {
	Namespace, Name, Path string
}

func (t target) String() string {
	s := t.Name
	if t.Namespace != "" {
		s = t.Namespace + "/" + s
	}
	if t.Path != "" {
		s += ":" + t.Path
	}
	return s
}

// parseSandbox reads [NAMESPACE/]SANDBOX.
func parseSandbox(s string) (target, error) {
	var t target
	if ns, name, ok := strings.Cut(s, "/"); ok {
		t.Namespace, t.Name = ns, name
	} else {
		t.Name = s
	}
	if t.Name == "" || strings.ContainsAny(t.Name, "/:") || (strings.Contains(s, "/") && t.Namespace == "") {
		return target{}, fmt.Errorf("invalid sandbox %q: want [NAMESPACE/]SANDBOX", s)
	}
	return t, nil
}

// parseRemote reads [NAMESPACE/]SANDBOX:PATH; ok is false when s names no
// sandbox (a local path). A path inside the sandbox must be absolute: the
// file API has no working directory.
func parseRemote(s string) (t target, ok bool, err error) {
	i := strings.Index(s, ":")
	if i <= 0 || strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") {
		return target{}, false, nil
	}
	t, err = parseSandbox(s[:i])
	if err != nil {
		return target{}, true, err
	}
	t.Path = s[i+1:]
	if !strings.HasPrefix(t.Path, "/") {
		return target{}, true, fmt.Errorf("invalid path %q in %q: paths in a sandbox must be absolute", t.Path, s)
	}
	return t, true, nil
}

// mustRemote reads an argument that must name a path in a sandbox.
func mustRemote(s string) (target, error) {
	t, ok, err := parseRemote(s)
	if err != nil {
		return target{}, err
	}
	if !ok {
		return target{}, fmt.Errorf("%q names no sandbox: want [NAMESPACE/]SANDBOX:/PATH", s)
	}
	return t, nil
}
