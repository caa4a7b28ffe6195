package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/image"
)

// defaultPath is the PATH given to the main process when neither the image
// nor the Sandbox sets one (as OCI runtimes do).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const (
	// defaultDiskMiB is the size of a Disk-medium writable layer or emptyDir
	// when the spec gives none (a sparse file: only written blocks use
	// space on the node).
	defaultDiskMiB = 4096
	// upperSerial is the virtio-blk serial of the writable layer's disk.
	upperSerial = "upper"
	// maxHostname is the longest host name the guest kernel accepts.
	maxHostname = 64
)

// objects reads the Secrets and ConfigMaps of the Sandbox's namespace that
// its spec refers to. A missing object is (nil, nil).
type objects interface {
	secret(name string) (map[string][]byte, error)
	configMap(name string) (map[string][]byte, error)
}

// errConfig marks a spec that cannot be turned into a guest configuration
// now (a missing Secret, ConfigMap or key): the start is retried, the
// reason shown in status.vm.message.
var errConfig = errors.New("invalid sandbox configuration")

// errUnsupported marks a spec this node agent will never run.
var errUnsupported = errors.New("not supported by this node agent")

// guestPlan is everything one run's VM needs beyond the image: the guest's
// Start message and the writable disks to attach.
type guestPlan struct {
	// start configures the guest; Argv is empty when there is no main
	// process (the VM then idles, serving exec sessions).
	start protocol.Start
	// upperMiB is the size of the writable layer's disk; 0 means a tmpfs of
	// upperTmpfsMiB in guest RAM instead.
	upperMiB      int
	upperTmpfsMiB int
	// volumes are the Disk-medium emptyDir volumes.
	volumes []volumeDisk
}

// volumeDisk is an emptyDir volume's disk, named by a serial derived from
// its guest path (stable when other mounts are added or removed).
type volumeDisk struct {
	serial  string
	sizeMiB int
}

// planGuest builds the guest configuration of sbx from its spec and its
// image's config, resolving Secret and ConfigMap references through objs.
//
//   - argv: spec.runtime.entrypoint replaces the image's ENTRYPOINT and, as
//     in Kubernetes, drops the image's CMD; spec.runtime.cmd replaces the
//     CMD. With spec.init the init is the main process and argv is empty.
//   - env: the image's ENV with spec.env merged over it (same name replaces,
//     in place; new names are appended), plus a default PATH when neither
//     has one; the scripts' directory comes first on PATH.
//   - dir: spec.runtime.workdir, else the image's WorkingDir, else "/".
//   - user: spec.runtime.user, else the image's USER, else root.
//   - hostname: spec.runtime.hostname, else the Sandbox's name.
func planGuest(sbx *sandboxv1alpha1.Sandbox, cfg image.Config, objs objects) (guestPlan, error) {
	var p guestPlan
	rt := sbx.Spec.Runtime
	if rt == nil {
		rt = &sandboxv1alpha1.RuntimeOptions{}
	}
	st := &p.start

	if sbx.Spec.Init == nil {
		entrypoint, cmd := cfg.Entrypoint, cfg.Cmd
		if len(rt.Entrypoint) > 0 {
			entrypoint, cmd = rt.Entrypoint, nil
		}
		if rt.Cmd != nil {
			cmd = rt.Cmd
		}
		if n := len(entrypoint) + len(cmd); n > 0 {
			st.Argv = append(append(make([]string, 0, n), entrypoint...), cmd...)
		}
	}

	env, err := mergeEnv(cfg.Env, sbx.Spec.Env, objs)
	if err != nil {
		return p, err
	}
	path := -1
	for i, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			path = i
		}
	}
	if path < 0 {
		env, path = append(env, "PATH="+defaultPath), len(env)
	}
	if len(rt.Scripts) > 0 {
		env[path] = "PATH=" + protocol.ScriptsDir + ":" + strings.TrimPrefix(env[path], "PATH=")
		st.Scripts = rt.Scripts
	}
	st.Env = env

	st.Dir = cfg.WorkingDir
	if rt.Workdir != nil && *rt.Workdir != "" {
		st.Dir = string(*rt.Workdir)
	}
	if st.Dir == "" {
		st.Dir = "/"
	}
	st.User = cfg.User
	if rt.User != "" {
		st.User = rt.User
	}
	st.Hostname = rt.Hostname
	if st.Hostname == "" {
		st.Hostname = hostnameFor(sbx.Name)
	}
	if rt.Shell != nil {
		st.Shell = string(*rt.Shell)
	}
	for _, rl := range sbx.Spec.Rlimits {
		st.Rlimits = append(st.Rlimits, protocol.Rlimit{Resource: string(rl.Resource), Soft: rl.Soft, Hard: rl.Hard})
	}

	if err := planMounts(&p, sbx, objs); err != nil {
		return p, err
	}
	for i, pt := range sbx.Spec.Patches {
		gp := protocol.Patch{Type: string(pt.Type), Path: string(pt.Path), Replace: pt.Replace != nil && *pt.Replace}
		if pt.Content != nil {
			gp.Content = []byte(*pt.Content)
		}
		if pt.ContentFrom != nil {
			b, ok, err := resolveSource(pt.ContentFrom, objs)
			if err != nil {
				return p, fmt.Errorf("spec.patches[%d]: %w", i, err)
			}
			if !ok {
				continue // an optional reference that is absent: no patch
			}
			gp.Content = b
		}
		if pt.Target != nil {
			gp.Target = *pt.Target
		}
		if pt.Mode != nil {
			gp.Mode = uint32(*pt.Mode)
		}
		st.Patches = append(st.Patches, gp)
	}
	if in := sbx.Spec.Init; in != nil {
		ienv, err := mergeEnv(nil, in.Env, objs)
		if err != nil {
			return p, fmt.Errorf("spec.init: %w", err)
		}
		st.Init = &protocol.Init{Argv: append([]string{in.Cmd}, in.Args...), Env: ienv}
	}

	rd := sbx.Spec.RootDisk
	switch {
	case rd != nil && rd.Medium == sandboxv1alpha1.DiskMediumMemory:
		p.upperTmpfsMiB = max(1, int(sbx.Spec.Resources.MemoryMiB)/2)
		if rd.SizeMiB != nil {
			p.upperTmpfsMiB = int(*rd.SizeMiB)
		}
	default:
		p.upperMiB = defaultDiskMiB
		if rd != nil && rd.SizeMiB != nil {
			p.upperMiB = int(*rd.SizeMiB)
		}
	}
	return p, nil
}

// planMounts turns spec.mounts into guest mounts and volume disks.
func planMounts(p *guestPlan, sbx *sandboxv1alpha1.Sandbox, objs objects) error {
	for i, m := range sbx.Spec.Mounts {
		gm := protocol.Mount{Path: string(m.GuestPath), ReadOnly: m.ReadOnly != nil && *m.ReadOnly}
		switch {
		case m.EmptyDir != nil && m.EmptyDir.Medium == sandboxv1alpha1.DiskMediumMemory:
			gm.TmpfsMiB = max(1, int(sbx.Spec.Resources.MemoryMiB)/4)
			if m.EmptyDir.SizeMiB != nil {
				gm.TmpfsMiB = int(*m.EmptyDir.SizeMiB)
			}
		case m.EmptyDir != nil:
			v := volumeDisk{serial: volumeSerial(m.GuestPath), sizeMiB: defaultDiskMiB}
			if m.EmptyDir.SizeMiB != nil {
				v.sizeMiB = int(*m.EmptyDir.SizeMiB)
			}
			p.volumes = append(p.volumes, v)
			gm.Disk = v.serial
		case m.ConfigMap != nil || m.Secret != nil:
			kind, om, get := "ConfigMap", m.ConfigMap, objs.configMap
			if m.Secret != nil {
				kind, om, get = "Secret", m.Secret, objs.secret
			}
			data, err := get(om.Name)
			if err != nil {
				return fmt.Errorf("spec.mounts[%d]: reading %s %q: %w", i, kind, om.Name, err)
			}
			if data == nil && (om.Optional == nil || !*om.Optional) {
				return fmt.Errorf("%w: spec.mounts[%d]: %s %q not found", errConfig, i, kind, om.Name)
			}
			gm.ReadOnly = true
			if len(data) == 0 {
				// An absent optional object (or an empty one) is an empty
				// read-only directory.
				gm.TmpfsMiB = 1
				break
			}
			keys := make([]string, 0, len(data))
			for k := range data {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				gm.Files = append(gm.Files, protocol.File{Name: k, Content: data[k], Mode: 0o644})
			}
		case m.PersistentVolumeClaim != nil:
			return fmt.Errorf("%w: spec.mounts[%d]: persistentVolumeClaim mounts are not available yet (use emptyDir, configMap or secret)", errUnsupported, i)
		}
		p.start.Mounts = append(p.start.Mounts, gm)
	}
	return nil
}

// volumeSerial names an emptyDir's disk after its guest path: 20 bytes,
// virtio-blk's limit for a serial.
func volumeSerial(guestPath sandboxv1alpha1.GuestPath) string {
	sum := sha256.Sum256([]byte(guestPath))
	return "vol-" + hex.EncodeToString(sum[:8])
}

// hostnameFor makes a host name of a Sandbox name: at most 64 characters,
// not ending in '-' or '.'.
func hostnameFor(name string) string {
	if len(name) > maxHostname {
		name = strings.TrimRight(name[:maxHostname], "-.")
	}
	return name
}

// mergeEnv merges spec env over base (KEY=VALUE): a name already present
// is replaced in place, new names are appended. valueFrom references are
// resolved through objs; an absent optional reference leaves the variable
// out, as the kubelet does.
func mergeEnv(base []string, vars []sandboxv1alpha1.EnvVar, objs objects) ([]string, error) {
	env := append([]string{}, base...)
	index := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, e := range vars {
		val := e.Value
		if e.ValueFrom != nil {
			b, ok, err := resolveSource(e.ValueFrom, objs)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			if !ok {
				continue
			}
			val = string(b)
		}
		kv := e.Name + "=" + val
		if i, ok := index[e.Name]; ok {
			env[i] = kv
		} else {
			index[e.Name] = len(env)
			env = append(env, kv)
		}
	}
	return env, nil
}

// resolveSource reads a Secret or ConfigMap key. ok is false for an absent
// object or key that the reference marks optional.
func resolveSource(src *sandboxv1alpha1.EnvVarSource, objs objects) (b []byte, ok bool, err error) {
	var kind, name, key string
	var optional *bool
	var get func(string) (map[string][]byte, error)
	switch {
	case src.SecretKeyRef != nil:
		kind, name, key, optional, get = "Secret", src.SecretKeyRef.Name, src.SecretKeyRef.Key, src.SecretKeyRef.Optional, objs.secret
	case src.ConfigMapKeyRef != nil:
		kind, name, key, optional, get = "ConfigMap", src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key, src.ConfigMapKeyRef.Optional, objs.configMap
	default:
		return nil, false, fmt.Errorf("%w: valueFrom names neither a Secret nor a ConfigMap", errConfig)
	}
	data, err := get(name)
	if err != nil {
		return nil, false, fmt.Errorf("reading %s %q: %w", kind, name, err)
	}
	isOptional := optional != nil && *optional
	if data == nil {
		if isOptional {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("%w: %s %q not found", errConfig, kind, name)
	}
	v, found := data[key]
	if !found {
		if isOptional {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("%w: key %q not found in %s %q", errConfig, key, kind, name)
	}
	return v, true, nil
}

// configMapData merges a ConfigMap's Data and BinaryData.
func configMapData(cm *corev1.ConfigMap) map[string][]byte {
	out := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		out[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		out[k] = v
	}
	return out
}
