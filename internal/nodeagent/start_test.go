package nodeagent

import (
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/image"
)

// mapObjects stands in for the API server's Secrets and ConfigMaps in the
// planGuest tables (the real reads are covered by the agent's envtest and
// e2e tests).
type mapObjects struct{ secrets, configMaps map[string]map[string][]byte }

func (m mapObjects) secret(n string) (map[string][]byte, error)    { return m.secrets[n], nil }
func (m mapObjects) configMap(n string) (map[string][]byte, error) { return m.configMaps[n], nil }

func TestPlanGuestProcess(t *testing.T) {
	img := image.Config{
		Entrypoint: []string{"/entry"}, Cmd: []string{"a", "b"},
		Env: []string{"PATH=/bin", "FOO=image", "KEEP=1"}, WorkingDir: "/app", User: "img",
	}
	objs := mapObjects{
		secrets:    map[string]map[string][]byte{"s": {"token": []byte("t0k")}},
		configMaps: map[string]map[string][]byte{"c": {"level": []byte("debug")}},
	}
	secretRef := func(name, key string, optional bool) *sandboxv1alpha1.EnvVarSource {
		return &sandboxv1alpha1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: ptr.To(optional)}}
	}
	for _, tc := range []struct {
		name    string
		runtime *sandboxv1alpha1.RuntimeOptions
		env     []sandboxv1alpha1.EnvVar
		img     image.Config
		want    protocol.Start
		wantErr string
	}{
		{
			name: "the image's config, the sandbox's name as host name",
			img:  img,
			want: protocol.Start{Argv: []string{"/entry", "a", "b"}, Env: []string{"PATH=/bin", "FOO=image", "KEEP=1"}, Dir: "/app", User: "img", Hostname: "sbx"},
		},
		{
			name: "spec.env replaces in place and appends; valueFrom is resolved; an absent optional key is left out",
			img:  img,
			env: []sandboxv1alpha1.EnvVar{{Name: "FOO", Value: "bar"}, {Name: "NEW"}, {Name: "TOKEN", ValueFrom: secretRef("s", "token", false)},
				{Name: "LEVEL", ValueFrom: &sandboxv1alpha1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "c"}, Key: "level"}}},
				{Name: "MAYBE", ValueFrom: secretRef("s", "absent", true)}},
			want: protocol.Start{Argv: []string{"/entry", "a", "b"}, Env: []string{"PATH=/bin", "FOO=bar", "KEEP=1", "NEW=", "TOKEN=t0k", "LEVEL=debug"},
				Dir: "/app", User: "img", Hostname: "sbx"},
		},
		{
			name:    "a missing Secret is a configuration error naming it",
			img:     img,
			env:     []sandboxv1alpha1.EnvVar{{Name: "TOKEN", ValueFrom: secretRef("nope", "token", false)}},
			wantErr: `env TOKEN: invalid sandbox configuration: Secret "nope" not found`,
		},
		{
			name:    "a missing key is a configuration error naming it",
			img:     img,
			env:     []sandboxv1alpha1.EnvVar{{Name: "TOKEN", ValueFrom: secretRef("s", "nokey", false)}},
			wantErr: `key "nokey" not found in Secret "s"`,
		},
		{
			name: "an entrypoint drops the image's cmd; workdir, user, hostname and shell replace the image's",
			img:  img,
			runtime: &sandboxv1alpha1.RuntimeOptions{Entrypoint: []string{"/x"}, Workdir: ptr.To[sandboxv1alpha1.GuestPath]("/w"),
				User: "1000:1000", Hostname: "box", Shell: ptr.To[sandboxv1alpha1.GuestPath]("/bin/bash")},
			want: protocol.Start{Argv: []string{"/x"}, Env: img.Env, Dir: "/w", User: "1000:1000", Hostname: "box", Shell: "/bin/bash"},
		},
		{
			name:    "cmd replaces the image's cmd; scripts go first on PATH",
			img:     img,
			runtime: &sandboxv1alpha1.RuntimeOptions{Cmd: []string{"c"}, Scripts: map[string]string{"hi": "echo hi"}},
			want: protocol.Start{Argv: []string{"/entry", "c"}, Env: []string{"PATH=" + protocol.ScriptsDir + ":/bin", "FOO=image", "KEEP=1"},
				Dir: "/app", User: "img", Hostname: "sbx", Scripts: map[string]string{"hi": "echo hi"}},
		},
		{
			name:    "a default PATH and dir",
			runtime: &sandboxv1alpha1.RuntimeOptions{Entrypoint: []string{"sh"}},
			want:    protocol.Start{Argv: []string{"sh"}, Env: []string{"PATH=" + defaultPath}, Dir: "/", Hostname: "sbx"},
		},
		{name: "nothing to run: no argv", want: protocol.Start{Env: []string{"PATH=" + defaultPath}, Dir: "/", Hostname: "sbx"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			sbx := &sandboxv1alpha1.Sandbox{Spec: sandboxv1alpha1.SandboxSpec{Runtime: tc.runtime, Env: tc.env}}
			sbx.Name = "sbx"
			p, err := planGuest(sbx, tc.img, objs)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				g.Expect(err).To(MatchError(errConfig))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(p.start).To(Equal(tc.want))
		})
	}
}

func TestPlanGuestFilesystem(t *testing.T) {
	objs := mapObjects{
		secrets:    map[string]map[string][]byte{"creds": {"b": []byte("2"), "a": []byte("1")}},
		configMaps: map[string]map[string][]byte{"motd": {"text": []byte("hello\n")}},
	}
	g := NewWithT(t)
	sbx := &sandboxv1alpha1.Sandbox{Spec: sandboxv1alpha1.SandboxSpec{
		Resources: sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 512},
		Rlimits:   []sandboxv1alpha1.Rlimit{{Resource: "nofile", Soft: 100, Hard: 200}},
		Mounts: []sandboxv1alpha1.Mount{
			{GuestPath: "/scratch", EmptyDir: &sandboxv1alpha1.EmptyDirMount{Medium: sandboxv1alpha1.DiskMediumMemory}},
			{GuestPath: "/data", EmptyDir: &sandboxv1alpha1.EmptyDirMount{Medium: sandboxv1alpha1.DiskMediumDisk, SizeMiB: ptr.To[int32](64)}},
			{GuestPath: "/creds", Secret: &sandboxv1alpha1.ObjectMount{Name: "creds"}},
			{GuestPath: "/opt", ConfigMap: &sandboxv1alpha1.ObjectMount{Name: "absent", Optional: ptr.To(true)}},
		},
		Patches: []sandboxv1alpha1.Patch{
			{Type: sandboxv1alpha1.PatchText, Path: "/etc/motd", Content: ptr.To("hi"), Mode: ptr.To[int32](0o600), Replace: ptr.To(true)},
			{Type: sandboxv1alpha1.PatchFile, Path: "/etc/motd2", ContentFrom: &sandboxv1alpha1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "motd"}, Key: "text"}}},
			{Type: sandboxv1alpha1.PatchSymlink, Path: "/l", Target: ptr.To("/etc/motd")},
		},
		RootDisk: &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumDisk, SizeMiB: ptr.To[int32](256)},
		Init:     &sandboxv1alpha1.InitHandoff{Cmd: "auto", Args: []string{"--x"}, Env: []sandboxv1alpha1.EnvVar{{Name: "container", Value: "sandbox"}}},
	}}
	sbx.Name = "sbx"
	p, err := planGuest(sbx, image.Config{Cmd: []string{"ignored", "with init"}}, objs)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(p.start.Argv).To(BeEmpty(), "with an init hand-off the init is the main process")
	g.Expect(p.start.Init).To(Equal(&protocol.Init{Argv: []string{"auto", "--x"}, Env: []string{"container=sandbox"}}))
	g.Expect(p.start.Rlimits).To(Equal([]protocol.Rlimit{{Resource: "nofile", Soft: 100, Hard: 200}}))
	g.Expect(p.upperMiB).To(Equal(256))
	serial := volumeSerial("/data")
	g.Expect(serial).To(HaveLen(20))
	g.Expect(p.volumes).To(Equal([]volumeDisk{{serial: serial, sizeMiB: 64}}))
	g.Expect(p.start.Mounts).To(Equal([]protocol.Mount{
		{Path: "/scratch", TmpfsMiB: 128},
		{Path: "/data", Disk: serial},
		{Path: "/creds", ReadOnly: true, Files: []protocol.File{{Name: "a", Content: []byte("1"), Mode: 0o644}, {Name: "b", Content: []byte("2"), Mode: 0o644}}},
		{Path: "/opt", ReadOnly: true, TmpfsMiB: 1},
	}))
	g.Expect(p.start.Patches).To(Equal([]protocol.Patch{
		{Type: "Text", Path: "/etc/motd", Content: []byte("hi"), Mode: 0o600, Replace: true},
		{Type: "File", Path: "/etc/motd2", Content: []byte("hello\n")},
		{Type: "Symlink", Path: "/l", Target: "/etc/motd"},
	}))

	// A memory-backed writable layer is a tmpfs of half the RAM by default.
	sbx.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumMemory}
	p, err = planGuest(sbx, image.Config{}, objs)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(p.upperMiB).To(BeZero())
	g.Expect(p.upperTmpfsMiB).To(Equal(256))

	// A required Secret that is missing, and a PVC, fail with clear errors.
	sbx.Spec.Mounts = []sandboxv1alpha1.Mount{{GuestPath: "/s", Secret: &sandboxv1alpha1.ObjectMount{Name: "gone"}}}
	_, err = planGuest(sbx, image.Config{}, objs)
	g.Expect(err).To(MatchError(errConfig))
	g.Expect(err).To(MatchError(ContainSubstring(`spec.mounts[0]: Secret "gone" not found`)))
	sbx.Spec.Mounts = []sandboxv1alpha1.Mount{{GuestPath: "/p", PersistentVolumeClaim: &sandboxv1alpha1.PVCMount{ClaimName: "c"}}}
	_, err = planGuest(sbx, image.Config{}, objs)
	g.Expect(err).To(MatchError(errUnsupported))
}

func TestHostnameFor(t *testing.T) {
	g := NewWithT(t)
	g.Expect(hostnameFor("short")).To(Equal("short"))
	long := strings.Repeat("a", 63) + "-b"
	g.Expect(hostnameFor(long)).To(Equal(strings.Repeat("a", 63)), "cut at 64 and no trailing '-'")
}

func TestMainExitCode(t *testing.T) {
	g := NewWithT(t)
	g.Expect(mainExitCode(protocol.Exit{Code: 3})).To(Equal(int32(3)))
	g.Expect(mainExitCode(protocol.Exit{Code: -1, Signal: "SIGKILL"})).To(Equal(int32(137)))
	g.Expect(mainExitMessage(protocol.Exit{Code: 3}, "")).To(Equal("The main process exited with code 3"))
}
