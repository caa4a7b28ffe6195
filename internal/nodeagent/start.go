package nodeagent

import (
	"strings"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/image"
)

// defaultPath is the PATH given to the main process when neither the image
// nor the Sandbox sets one (as OCI runtimes do).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// mainProcess is the run configuration of the Sandbox's main process, or
// nil when there is nothing to run (no entrypoint and no cmd anywhere: the
// VM then idles).
//
//   - argv: spec.runtime.entrypoint replaces the image's ENTRYPOINT and, as
//     in Kubernetes, drops the image's CMD; spec.runtime.cmd replaces the
//     CMD. The result is entrypoint + cmd.
//   - env: the image's ENV with spec.env merged over it (same name
//     replaces, in place; new names are appended), plus a default PATH when
//     neither has one. Variables with valueFrom are not resolved yet and are
//     left out.
//   - dir: spec.runtime.workdir, else the image's WorkingDir, else "/".
//
// spec.runtime.user and the image's USER are not applied yet: the main
// process runs as root.
func mainProcess(sbx *sandboxv1alpha1.Sandbox, cfg image.Config) *protocol.Start {
	entrypoint, cmd := cfg.Entrypoint, cfg.Cmd
	rt := sbx.Spec.Runtime
	if rt != nil && len(rt.Entrypoint) > 0 {
		entrypoint, cmd = rt.Entrypoint, nil
	}
	if rt != nil && rt.Cmd != nil {
		cmd = rt.Cmd
	}
	argv := append(append([]string{}, entrypoint...), cmd...)
	if len(argv) == 0 {
		return nil
	}

	env := append([]string{}, cfg.Env...)
	index := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, e := range sbx.Spec.Env {
		if e.ValueFrom != nil {
			continue // TODO: resolve Secret and ConfigMap references.
		}
		kv := e.Name + "=" + e.Value
		if i, ok := index[e.Name]; ok {
			env[i] = kv
		} else {
			index[e.Name] = len(env)
			env = append(env, kv)
		}
	}
	if _, ok := index["PATH"]; !ok {
		env = append(env, "PATH="+defaultPath)
	}

	dir := cfg.WorkingDir
	if rt != nil && rt.Workdir != nil && *rt.Workdir != "" {
		dir = string(*rt.Workdir)
	}
	if dir == "" {
		dir = "/"
	}
	return &protocol.Start{Argv: argv, Env: env, Dir: dir}
}
