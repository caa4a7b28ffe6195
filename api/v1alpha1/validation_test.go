package v1alpha1_test

// Admission tests of the Sandbox CRD against a real kube-apiserver and etcd
// (controller-runtime's envtest): the OpenAPI schema, the defaults and every
// CEL rule of config/crd/bases/sandbox.microvm.dev_sandboxes.yaml, which is
// generated from the markers in this package.
//
// The binaries come from KUBEBUILDER_ASSETS (kube-apiserver, etcd, kubectl).
// When it is unset, ../../bin/k8s is used; without a kube-apiserver there the
// package fails at once (run `make control-plane`).

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

const (
	testNamespace = "admission"
	// immutableMsg is the message of the transition rules that freeze most
	// of the spec while a VM exists.
	immutableMsg = "set spec.state to Stopped first"
	// validImage is the image of the valid base Sandbox.
	validImage = "docker.io/library/python:3.12"
	digest     = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

var (
	k8sClient client.Client
	// testEnv is the control plane started by TestMain.
	testEnv *envtest.Environment
)

func TestMain(m *testing.M) {
	ctrllog.SetLogger(logr.Discard())
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	// Fuzzing (make test runs FuzzDerivePhase with -run '^$') needs no API
	// server; and fuzz worker processes are killed without running the
	// deferred Stop, which would leak etcd and hang the fuzz coordinator.
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run()
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets, _ = filepath.Abs(filepath.Join("..", "..", "bin", "k8s"))
	}
	if !fileExists(filepath.Join(assets, "kube-apiserver")) {
		fmt.Fprintf(os.Stderr, "no kube-apiserver in %q: run `make control-plane` or set KUBEBUILDER_ASSETS\n", assets)
		return 1
	}

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	// BinPathFinder prefers KUBEBUILDER_ASSETS over BinaryAssetsDirectory;
	// make both agree.
	if err := os.Setenv("KUBEBUILDER_ASSETS", assets); err != nil {
		fmt.Fprintln(os.Stderr, "setenv:", err)
		return 1
	}

	cfg, err := testEnv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}()

	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := sandboxv1alpha1.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}
	if err := k8sClient.Create(ctx, ns); err != nil {
		fmt.Fprintln(os.Stderr, "creating namespace:", err)
		return 1
	}
	return m.Run()
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// requireEnv fails a test that needs the API server when TestMain did not
// start one (only when fuzzing).
func requireEnv(t *testing.T) {
	t.Helper()
	if testEnv == nil {
		t.Fatal("no control plane: these tests need TestMain's envtest (not available while fuzzing)")
	}
}

func ptr[T any](v T) *T { return &v }

func gp(s string) *sandboxv1alpha1.GuestPath { return ptr(sandboxv1alpha1.GuestPath(s)) }

// baseSandbox is the valid Sandbox every invalid case starts from.
func baseSandbox(name string) *sandboxv1alpha1.Sandbox {
	return &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec:       sandboxv1alpha1.SandboxSpec{Image: validImage},
	}
}

func secretKey(name, key string) *corev1.SecretKeySelector {
	return &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}
}

func configMapKey(name, key string) *corev1.ConfigMapKeySelector {
	return &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}
}

// enabledNetwork returns a network with the NIC explicitly enabled.
func enabledNetwork() *sandboxv1alpha1.NetworkSpec {
	return &sandboxv1alpha1.NetworkSpec{Enabled: ptr(true)}
}

// withRule sets a network policy with one Allow rule built by f.
func withRule(f func(r *sandboxv1alpha1.NetworkRule)) func(s *sandboxv1alpha1.Sandbox) {
	return func(s *sandboxv1alpha1.Sandbox) {
		r := sandboxv1alpha1.NetworkRule{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{CIDR: "10.0.0.0/8"}}
		f(&r)
		s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Policy: &sandboxv1alpha1.NetworkPolicy{Rules: []sandboxv1alpha1.NetworkRule{r}}}
	}
}

// withPatch sets a single patch.
func withPatch(p sandboxv1alpha1.Patch) func(s *sandboxv1alpha1.Sandbox) {
	return func(s *sandboxv1alpha1.Sandbox) { s.Spec.Patches = []sandboxv1alpha1.Patch{p} }
}

// withMount sets a single mount.
func withMount(m sandboxv1alpha1.Mount) func(s *sandboxv1alpha1.Sandbox) {
	return func(s *sandboxv1alpha1.Sandbox) { s.Spec.Mounts = []sandboxv1alpha1.Mount{m} }
}

// withSecret sets a single network secret, completed with valid defaults
// for fields f leaves empty.
func withSecret(f func(ns *sandboxv1alpha1.NetworkSecret)) func(s *sandboxv1alpha1.Sandbox) {
	return func(s *sandboxv1alpha1.Sandbox) {
		sec := sandboxv1alpha1.NetworkSecret{
			EnvVar:       "API_TOKEN",
			SecretKeyRef: *secretKey("creds", "token"),
			AllowedHosts: []string{"api.example.com"},
		}
		f(&sec)
		s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Secrets: []sandboxv1alpha1.NetworkSecret{sec}}
	}
}

type invalidCase struct {
	// name says what is wrong.
	name string
	// mutate edits the valid base Sandbox.
	mutate func(s *sandboxv1alpha1.Sandbox)
	// raw, when set, edits the object after conversion to unstructured, for
	// values the typed object cannot carry (a zero behind omitempty, an
	// empty list).
	raw func(obj map[string]any)
	// want are substrings of the API server's error; the first is the
	// field path.
	want []string
}

func invalidCases() []invalidCase {
	return []invalidCase{
		// image
		{name: "an empty image is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "" },
			want:   []string{"spec.image", "at least 1 chars long"}},
		{name: "an absolute host path as image is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "/var/lib/images/rootfs.ext4" },
			want:   []string{"spec.image", "host paths and URLs"}},
		{name: "a relative host path as image is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "./rootfs" },
			want:   []string{"spec.image", "host paths and URLs"}},
		{name: "a URL as image is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "https://example.com/images/python.tar" },
			want:   []string{"spec.image", "host paths and URLs"}},
		{name: "an image reference with a double colon is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "python::3.12" },
			want:   []string{"spec.image", "must be an OCI image reference such as"}},
		{name: "an image reference with an uppercase repository is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "docker.io/Library/Python:3.12" },
			want:   []string{"spec.image", "must be an OCI image reference such as"}},
		{name: "an image reference with a short digest is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "python@sha256:abc123" },
			want:   []string{"spec.image", "must be an OCI image reference such as"}},
		{name: "an image reference with a space is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "python 3.12" },
			want:   []string{"spec.image", "must be an OCI image reference such as"}},
		{name: "an image reference longer than 512 characters is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Image = "registry.example.com/" + strings.Repeat("a", 500) + ":v1"
			},
			want: []string{"spec.image", "512"}},

		// resources
		{name: "zero cpus are rejected",
			raw:  func(o map[string]any) { setRaw(o, int64(0), "spec", "resources", "cpus") },
			want: []string{"spec.resources.cpus", "greater than or equal to 1"}},
		{name: "65 cpus are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Resources.CPUs = 65 },
			want:   []string{"spec.resources.cpus", "less than or equal to 64"}},
		{name: "32 MiB of memory are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Resources.MemoryMiB = 32 },
			want:   []string{"spec.resources.memoryMiB", "greater than or equal to 64"}},
		{name: "more than 1 TiB of memory is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Resources.MemoryMiB = 1048577 },
			want:   []string{"spec.resources.memoryMiB", "less than or equal to 1048576"}},

		// rootDisk
		{name: "a root disk smaller than 16 MiB is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{SizeMiB: ptr(int32(8))} },
			want:   []string{"spec.rootDisk.sizeMiB", "greater than or equal to 16"}},
		{name: "a Memory root disk larger than the guest memory is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Resources.MemoryMiB = 512
				s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumMemory, SizeMiB: ptr(int32(1024))}
			},
			want: []string{"spec.rootDisk.sizeMiB", "must not be larger than resources.memoryMiB"}},
		{name: "a Memory root disk larger than the default guest memory is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumMemory, SizeMiB: ptr(int32(513))}
			},
			want: []string{"spec.rootDisk.sizeMiB", "must not be larger than resources.memoryMiB"}},
		{name: "an unknown root disk medium is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: "SSD"} },
			want:   []string{"spec.rootDisk.medium", `Unsupported value: "SSD"`}},

		// runtime
		{name: "a relative workdir is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Workdir: gp("app")} },
			want:   []string{"spec.runtime.workdir", "should match"}},
		{name: "a workdir containing ':' is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Workdir: gp("/app:rw")}
			},
			want: []string{"spec.runtime.workdir", "should match"}},
		{name: "a shell path with a '..' segment is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Shell: gp("/bin/../usr/bin/sh")}
			},
			want: []string{"spec.runtime.shell", "must not contain '..' segments"}},
		{name: "a script name with a slash is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Scripts: map[string]string{"../evil": "echo"}}
			},
			want: []string{"spec.runtime.scripts", "script names must be"}},
		{name: "a script name starting with a dot is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Scripts: map[string]string{".hidden": "echo"}}
			},
			want: []string{"spec.runtime.scripts", "script names must be"}},
		{name: "a script larger than 64 KiB is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Scripts: map[string]string{"big": strings.Repeat("x", 65537)}}
			},
			want: []string{"spec.runtime.scripts", "each script must be at most 65536 bytes"}},
		{name: "more than 64 scripts are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				m := map[string]string{}
				for i := range 65 {
					m[fmt.Sprintf("s%d", i)] = "true"
				}
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Scripts: m}
			},
			want: []string{"spec.runtime.scripts", "Too many"}},
		{name: "an empty entrypoint list is rejected",
			raw:  func(o map[string]any) { setRaw(o, []any{}, "spec", "runtime", "entrypoint") },
			want: []string{"spec.runtime.entrypoint", "at least 1 items"}},
		{name: "a hostname with uppercase letters and '_' is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Hostname: "Bad_Host"}
			},
			want: []string{"spec.runtime.hostname", "should match"}},
		{name: "a hostname longer than 64 characters is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Hostname: strings.Repeat("h", 65)}
			},
			want: []string{"spec.runtime.hostname", "64"}},
		{name: "a user with two colons is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{User: "root:wheel:adm"}
			},
			want: []string{"spec.runtime.user", "should match"}},
		{name: "a user starting with '-' is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{User: "-root"} },
			want:   []string{"spec.runtime.user", "should match"}},
		{name: "an unknown log level is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{LogLevel: "verbose"}
			},
			want: []string{"spec.runtime.logLevel", `Unsupported value: "verbose"`}},

		// env
		{name: "an env name starting with a digit is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "1FOO", Value: "x"}} },
			want:   []string{"spec.env[0].name", "should match"}},
		{name: "an env name with '-' is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "FOO-BAR", Value: "x"}} },
			want:   []string{"spec.env[0].name", "should match"}},
		{name: "an env var with both value and valueFrom is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "FOO", Value: "x", ValueFrom: &sandboxv1alpha1.EnvVarSource{SecretKeyRef: secretKey("s", "k")}}}
			},
			want: []string{"spec.env[0]", "set either value or valueFrom, not both"}},
		{name: "a valueFrom with both a Secret and a ConfigMap key is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "FOO", ValueFrom: &sandboxv1alpha1.EnvVarSource{
					SecretKeyRef: secretKey("s", "k"), ConfigMapKeyRef: configMapKey("c", "k")}}}
			},
			want: []string{"spec.env[0].valueFrom", "set exactly one of secretKeyRef or configMapKeyRef"}},
		{name: "a valueFrom with neither a Secret nor a ConfigMap key is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "FOO", ValueFrom: &sandboxv1alpha1.EnvVarSource{}}}
			},
			want: []string{"spec.env[0].valueFrom", "set exactly one of secretKeyRef or configMapKeyRef"}},
		{name: "duplicate env names are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "FOO", Value: "1"}, {Name: "FOO", Value: "2"}}
			},
			want: []string{"spec.env[1]", "Duplicate value"}},
		{name: "more than 256 env vars are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				for i := range 257 {
					s.Spec.Env = append(s.Spec.Env, sandboxv1alpha1.EnvVar{Name: fmt.Sprintf("V%d", i)})
				}
			},
			want: []string{"spec.env", "Too many"}},

		// lifecycle
		{name: "a maximum duration of 0 seconds is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{MaxDurationSeconds: ptr(int64(0))}
			},
			want: []string{"spec.lifecycle.maxDurationSeconds", "greater than or equal to 1"}},
		{name: "a maximum duration over a year is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{MaxDurationSeconds: ptr(int64(31536001))}
			},
			want: []string{"spec.lifecycle.maxDurationSeconds", "less than or equal to 31536000"}},
		{name: "a negative idle timeout is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{IdleTimeoutSeconds: ptr(int64(-5))}
			},
			want: []string{"spec.lifecycle.idleTimeoutSeconds", "greater than or equal to 1"}},

		// mounts
		{name: "a relative mount path is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "data", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}),
			want:   []string{"spec.mounts[0].guestPath", "should match"}},
		{name: "a mount at the root directory is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}),
			want:   []string{"spec.mounts[0].guestPath", "guestPath must not be the root directory"}},
		{name: "a mount path with a '..' segment is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/data/../etc", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}),
			want:   []string{"spec.mounts[0].guestPath", "must not contain '..' segments"}},
		{name: "a mount path ending in '..' is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/data/..", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}),
			want:   []string{"spec.mounts[0].guestPath", "must not contain '..' segments"}},
		{name: "a mount path containing ':' is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/data:rw", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}),
			want:   []string{"spec.mounts[0].guestPath", "should match"}},
		{name: "a mount path containing ',' is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/a,b", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}),
			want:   []string{"spec.mounts[0].guestPath", "should match"}},
		{name: "a mount without a source is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/data"}),
			want:   []string{"spec.mounts[0]", "set exactly one of emptyDir, persistentVolumeClaim, configMap or secret"}},
		{name: "a mount with two sources is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/data", EmptyDir: &sandboxv1alpha1.EmptyDirMount{},
				PersistentVolumeClaim: &sandboxv1alpha1.PVCMount{ClaimName: "data"}}),
			want: []string{"spec.mounts[0]", "set exactly one of emptyDir, persistentVolumeClaim, configMap or secret"}},
		{name: "two mounts at the same guestPath are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Mounts = []sandboxv1alpha1.Mount{
					{GuestPath: "/data", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}},
					{GuestPath: "/data", PersistentVolumeClaim: &sandboxv1alpha1.PVCMount{ClaimName: "data"}},
				}
			},
			want: []string{"spec.mounts[1]", "Duplicate value"}},
		{name: "a writable configMap mount is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/etc/app", ReadOnly: ptr(false), ConfigMap: &sandboxv1alpha1.ObjectMount{Name: "app"}}),
			want:   []string{"spec.mounts[0].readOnly", "configMap and secret mounts are always read-only"}},
		{name: "a writable secret mount is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/etc/creds", ReadOnly: ptr(false), Secret: &sandboxv1alpha1.ObjectMount{Name: "creds"}}),
			want:   []string{"spec.mounts[0].readOnly", "configMap and secret mounts are always read-only"}},
		{name: "an emptyDir of 0 MiB is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/scratch", EmptyDir: &sandboxv1alpha1.EmptyDirMount{SizeMiB: ptr(int32(0))}}),
			want:   []string{"spec.mounts[0].emptyDir.sizeMiB", "greater than or equal to 1"}},
		{name: "an emptyDir with an unknown medium is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/scratch", EmptyDir: &sandboxv1alpha1.EmptyDirMount{Medium: "Tape"}}),
			want:   []string{"spec.mounts[0].emptyDir.medium", `Unsupported value: "Tape"`}},
		{name: "a PVC mount without a claim name is rejected",
			mutate: withMount(sandboxv1alpha1.Mount{GuestPath: "/data", PersistentVolumeClaim: &sandboxv1alpha1.PVCMount{}}),
			want:   []string{"spec.mounts[0].persistentVolumeClaim.claimName", "at least 1 chars long"}},
		{name: "more than 32 mounts are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				for i := range 33 {
					s.Spec.Mounts = append(s.Spec.Mounts, sandboxv1alpha1.Mount{GuestPath: sandboxv1alpha1.GuestPath(fmt.Sprintf("/m%d", i)), EmptyDir: &sandboxv1alpha1.EmptyDirMount{}})
				}
			},
			want: []string{"spec.mounts", "Too many"}},

		// patches
		{name: "a Text patch without content is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchText, Path: "/etc/motd"}),
			want:   []string{"spec.patches[0]", "Text and Append patches need exactly one of content or contentFrom"}},
		{name: "an Append patch with both content and contentFrom is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchAppend, Path: "/etc/hosts", Content: ptr("x"),
				ContentFrom: &sandboxv1alpha1.EnvVarSource{ConfigMapKeyRef: configMapKey("c", "hosts")}}),
			want: []string{"spec.patches[0]", "Text and Append patches need exactly one of content or contentFrom"}},
		{name: "a File patch with inline content is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchFile, Path: "/etc/app.conf", Content: ptr("x")}),
			want:   []string{"spec.patches[0]", "File patches need contentFrom"}},
		{name: "a File patch without contentFrom is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchFile, Path: "/etc/app.conf"}),
			want:   []string{"spec.patches[0]", "File patches need contentFrom"}},
		{name: "a Symlink patch with content is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchSymlink, Path: "/usr/bin/py", Target: ptr("python3"), Content: ptr("x")}),
			want:   []string{"spec.patches[0]", "Symlink, Mkdir and Remove patches take no content"}},
		{name: "a Mkdir patch with contentFrom is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchMkdir, Path: "/srv/data",
				ContentFrom: &sandboxv1alpha1.EnvVarSource{SecretKeyRef: secretKey("s", "k")}}),
			want: []string{"spec.patches[0]", "Symlink, Mkdir and Remove patches take no content"}},
		{name: "a Symlink patch without target is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchSymlink, Path: "/usr/bin/py"}),
			want:   []string{"spec.patches[0].target", "target is required for Symlink patches and not allowed for others"}},
		{name: "a Text patch with a target is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchText, Path: "/etc/motd", Content: ptr("hi"), Target: ptr("/x")}),
			want:   []string{"spec.patches[0].target", "target is required for Symlink patches and not allowed for others"}},
		{name: "a Remove patch with a mode is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchRemove, Path: "/etc/motd", Mode: ptr(int32(0o644))}),
			want:   []string{"spec.patches[0].mode", "mode applies only to Text, File and Mkdir patches"}},
		{name: "a Mkdir patch with replace is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchMkdir, Path: "/srv", Replace: ptr(true)}),
			want:   []string{"spec.patches[0].replace", "replace applies only to Text, File and Symlink patches"}},
		{name: "a patch of the root directory is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchRemove, Path: "/"}),
			want:   []string{"spec.patches[0].path", "must not be the root directory"}},
		{name: "a patch with a relative path is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchText, Path: "etc/motd", Content: ptr("hi")}),
			want:   []string{"spec.patches[0].path", "should match"}},
		{name: "a patch path with a '..' segment is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchRemove, Path: "/etc/../root"}),
			want:   []string{"spec.patches[0].path", "must not contain '..' segments"}},
		{name: "a patch mode above 07777 is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchMkdir, Path: "/srv", Mode: ptr(int32(0o10000))}),
			want:   []string{"spec.patches[0].mode", "less than or equal to 4095"}},
		{name: "an unknown patch type is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: "Chmod", Path: "/srv"}),
			want:   []string{"spec.patches[0].type", `Unsupported value: "Chmod"`}},
		{name: "a patch contentFrom with both a Secret and a ConfigMap key is rejected",
			mutate: withPatch(sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchFile, Path: "/etc/app.conf",
				ContentFrom: &sandboxv1alpha1.EnvVarSource{SecretKeyRef: secretKey("s", "k"), ConfigMapKeyRef: configMapKey("c", "k")}}),
			want: []string{"spec.patches[0].contentFrom", "set exactly one of secretKeyRef or configMapKeyRef"}},
		{name: "more than 64 patches are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				for i := range 65 {
					s.Spec.Patches = append(s.Spec.Patches, sandboxv1alpha1.Patch{Type: sandboxv1alpha1.PatchMkdir, Path: sandboxv1alpha1.GuestPath(fmt.Sprintf("/d%d", i))})
				}
			},
			want: []string{"spec.patches", "Too many"}},

		// rlimits
		{name: "an unknown rlimit resource is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Rlimits = []sandboxv1alpha1.Rlimit{{Resource: "files", Soft: 1, Hard: 2}}
			},
			want: []string{"spec.rlimits[0].resource", `Unsupported value: "files"`}},
		{name: "an rlimit with soft above hard is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Rlimits = []sandboxv1alpha1.Rlimit{{Resource: "nofile", Soft: 4096, Hard: 1024}}
			},
			want: []string{"spec.rlimits[0]", "soft must not exceed hard"}},
		{name: "an rlimit resource listed twice is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Rlimits = []sandboxv1alpha1.Rlimit{{Resource: "nofile", Soft: 1, Hard: 2}, {Resource: "nofile", Soft: 3, Hard: 4}}
			},
			want: []string{"spec.rlimits[1]", "Duplicate value"}},
		{name: "a negative rlimit is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Rlimits = []sandboxv1alpha1.Rlimit{{Resource: "nproc", Soft: -1, Hard: 10}}
			},
			want: []string{"spec.rlimits[0].soft", "greater than or equal to 0"}},

		// init
		{name: "a relative init command is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Init = &sandboxv1alpha1.InitHandoff{Cmd: "sbin/init"} },
			want:   []string{"spec.init.cmd", `must be "auto" or an absolute path without '..' segments`}},
		{name: "an init command with a '..' segment is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Init = &sandboxv1alpha1.InitHandoff{Cmd: "/sbin/../tmp/init"} },
			want:   []string{"spec.init.cmd", `must be "auto" or an absolute path without '..' segments`}},
		{name: "an empty init command is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Init = &sandboxv1alpha1.InitHandoff{Cmd: ""} },
			want:   []string{"spec.init.cmd", "at least 1 chars long"}},
		{name: "an init env var with a bad name is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Init = &sandboxv1alpha1.InitHandoff{Cmd: "auto", Env: []sandboxv1alpha1.EnvVar{{Name: "a b"}}}
			},
			want: []string{"spec.init.env[0].name", "should match"}},

		// network: enabled=false
		{name: "published ports on a disabled network are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false), Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: 80, HostPort: 8080}}}
			},
			want: []string{"spec.network", "ports, policy, dns, secrets and trustHostCAs require the network to be enabled"}},
		{name: "a policy on a disabled network is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false), Policy: &sandboxv1alpha1.NetworkPolicy{DefaultEgress: sandboxv1alpha1.PolicyDeny}}
			},
			want: []string{"spec.network", "require the network to be enabled"}},
		{name: "dns settings on a disabled network are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false), DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"1.1.1.1"}}}
			},
			want: []string{"spec.network", "require the network to be enabled"}},
		{name: "secrets on a disabled network are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				withSecret(func(*sandboxv1alpha1.NetworkSecret) {})(s)
				s.Spec.Network.Enabled = ptr(false)
			},
			want: []string{"spec.network", "require the network to be enabled"}},
		{name: "trustHostCAs on a disabled network is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false), TrustHostCAs: true}
			},
			want: []string{"spec.network", "require the network to be enabled"}},

		// network: ports
		{name: "guest port 0 is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: 0, HostPort: 8080}}}
			},
			want: []string{"spec.network.ports[0].guestPort", "greater than or equal to 1"}},
		{name: "host port 70000 is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: 80, HostPort: 70000}}}
			},
			want: []string{"spec.network.ports[0].hostPort", "less than or equal to 65535"}},
		{name: "a host port published twice for the same protocol is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{
					{GuestPort: 80, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP},
					{GuestPort: 81, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP},
				}}
			},
			want: []string{"spec.network.ports", "each hostPort may be published once per protocol"}},
		{name: "a host port published twice with the defaulted protocol is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{
					{GuestPort: 80, HostPort: 8080},
					{GuestPort: 81, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP},
				}}
			},
			want: []string{"spec.network.ports", "each hostPort may be published once per protocol"}},
		{name: "a guest port published twice for the same protocol is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{
					{GuestPort: 80, HostPort: 8080, Protocol: sandboxv1alpha1.ProtocolTCP},
					{GuestPort: 80, HostPort: 8081, Protocol: sandboxv1alpha1.ProtocolTCP},
				}}
			},
			want: []string{"spec.network.ports[1]", "Duplicate value"}},
		{name: "a host IP that is a name is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: 80, HostPort: 8080, HostIP: "localhost"}}}
			},
			want: []string{"spec.network.ports[0].hostIP", "must be an IPv4 or IPv6 address"}},
		{name: "a host IP with an octet over 255 is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: 80, HostPort: 8080, HostIP: "10.0.0.256"}}}
			},
			want: []string{"spec.network.ports[0].hostIP", "must be an IPv4 or IPv6 address"}},
		{name: "an unknown port protocol is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{{GuestPort: 80, HostPort: 8080, Protocol: "SCTP"}}}
			},
			want: []string{"spec.network.ports[0].protocol", `Unsupported value: "SCTP"`}},
		{name: "an uppercase port name is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{{Name: "HTTP", GuestPort: 80, HostPort: 8080}}}
			},
			want: []string{"spec.network.ports[0].name", "should match"}},
		{name: "more than 64 published ports are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = enabledNetwork()
				for i := range 65 {
					s.Spec.Network.Ports = append(s.Spec.Network.Ports, sandboxv1alpha1.PublishedPort{GuestPort: int32(1000 + i), HostPort: int32(2000 + i)})
				}
			},
			want: []string{"spec.network.ports", "Too many"}},

		// network: policy
		{name: "an invalid CIDR is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{CIDR: "10.0.0.0/33"}
			}),
			want: []string{"spec.network.policy.rules[0].destination.cidr", "must be a CIDR such as 10.0.0.0/8"}},
		{name: "a bare address as CIDR is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{CIDR: "10.0.0.1"}
			}),
			want: []string{"spec.network.policy.rules[0].destination.cidr", "must be a CIDR such as 10.0.0.0/8"}},
		{name: "a destination with a CIDR and a domain is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{CIDR: "10.0.0.0/8", Domain: "example.com"}
			}),
			want: []string{"spec.network.policy.rules[0].destination", "set exactly one of cidr, domain, domainSuffix or group"}},
		{name: "an empty destination is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) { r.Destination = sandboxv1alpha1.NetworkDestination{} }),
			want:   []string{"spec.network.policy.rules[0].destination", "set exactly one of cidr, domain, domainSuffix or group"}},
		{name: "a port range ending below its start is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Ports = []sandboxv1alpha1.PortRange{{Start: 8000, End: ptr(int32(7000))}}
			}),
			want: []string{"spec.network.policy.rules[0].ports[0]", "end must not be below start"}},
		{name: "a port range starting at 0 is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) { r.Ports = []sandboxv1alpha1.PortRange{{Start: 0}} }),
			want:   []string{"spec.network.policy.rules[0].ports[0].start", "greater than or equal to 1"}},
		{name: "a domain with a leading '-' label is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{Domain: "-bad-.example.com"}
			}),
			want: []string{"spec.network.policy.rules[0].destination.domain", "should match"}},
		{name: "a domain with a wildcard is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{Domain: "*.example.com"}
			}),
			want: []string{"spec.network.policy.rules[0].destination.domain", "should match"}},
		{name: "a domain suffix with a wildcard is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{DomainSuffix: "*.example.com"}
			}),
			want: []string{"spec.network.policy.rules[0].destination.domainSuffix", "should match"}},
		{name: "an unknown destination group is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) {
				r.Destination = sandboxv1alpha1.NetworkDestination{Group: "Internet"}
			}),
			want: []string{"spec.network.policy.rules[0].destination.group", `Unsupported value: "Internet"`}},
		{name: "an unknown rule action is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) { r.Action = "Reject" }),
			want:   []string{"spec.network.policy.rules[0].action", `Unsupported value: "Reject"`}},
		{name: "an unknown rule protocol is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) { r.Protocols = []sandboxv1alpha1.RuleProtocol{"SCTP"} }),
			want:   []string{"spec.network.policy.rules[0].protocols[0]", `Unsupported value: "SCTP"`}},
		{name: "a rule protocol listed twice is rejected",
			mutate: withRule(func(r *sandboxv1alpha1.NetworkRule) { r.Protocols = []sandboxv1alpha1.RuleProtocol{"TCP", "TCP"} }),
			want:   []string{"spec.network.policy.rules[0].protocols[1]", "Duplicate value"}},
		{name: "an unknown default egress action is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Policy: &sandboxv1alpha1.NetworkPolicy{DefaultEgress: "Maybe"}}
			},
			want: []string{"spec.network.policy.defaultEgress", `Unsupported value: "Maybe"`}},

		// network: dns
		{name: "a nameserver that is a host name is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"dns.google"}}}
			},
			want: []string{"spec.network.dns.nameservers", "each nameserver must be an IP address, optionally with :port (1-65535)"}},
		{name: "a nameserver host name with a port is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"1.1.1.1", "dns.google:53"}}}
			},
			want: []string{"spec.network.dns.nameservers", "each nameserver must be an IP address, optionally with :port (1-65535)"}},
		{name: "a nameserver with a port that is not a number is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"1.1.1.1:abc"}}}
			},
			want: []string{"spec.network.dns.nameservers", "each nameserver must be an IP address, optionally with :port (1-65535)"}},
		{name: "a nameserver with port 99999 is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"10.0.0.2:99999"}}}
			},
			want: []string{"spec.network.dns.nameservers", "each nameserver must be an IP address, optionally with :port (1-65535)"}},
		{name: "more than 3 nameservers are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"}}}
			},
			want: []string{"spec.network.dns.nameservers", "Too many"}},
		{name: "a DNS query timeout below 100 ms is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{QueryTimeoutMillis: 50}}
			},
			want: []string{"spec.network.dns.queryTimeoutMillis", "greater than or equal to 100"}},

		// network: secrets
		{name: "a network secret with no allowed hosts is rejected",
			mutate: withSecret(func(ns *sandboxv1alpha1.NetworkSecret) { ns.AllowedHosts = []string{} }),
			want:   []string{"spec.network.secrets[0].allowedHosts", "at least 1 items"}},
		{name: "a network secret whose envVar is also in env is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				withSecret(func(*sandboxv1alpha1.NetworkSecret) {})(s)
				s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "API_TOKEN", Value: "leaked"}}
			},
			want: []string{"spec.network.secrets", "a network secret's envVar must not also be set in env"}},
		{name: "a placeholder shorter than 8 characters is rejected",
			mutate: withSecret(func(ns *sandboxv1alpha1.NetworkSecret) { ns.Placeholder = "abc" }),
			want:   []string{"spec.network.secrets[0].placeholder", "at least 8 chars long"}},
		{name: "a placeholder with a newline is rejected",
			mutate: withSecret(func(ns *sandboxv1alpha1.NetworkSecret) { ns.Placeholder = "PLACE\nHOLDER" }),
			want:   []string{"spec.network.secrets[0].placeholder", "should match"}},
		{name: "an allowed host that is a URL is rejected",
			mutate: withSecret(func(ns *sandboxv1alpha1.NetworkSecret) { ns.AllowedHosts = []string{"https://api.example.com"} }),
			want:   []string{"spec.network.secrets[0].allowedHosts[0]", "should match"}},
		{name: "a network secret envVar with '-' is rejected",
			mutate: withSecret(func(ns *sandboxv1alpha1.NetworkSecret) { ns.EnvVar = "API-TOKEN" }),
			want:   []string{"spec.network.secrets[0].envVar", "should match"}},
		{name: "an unknown secret violation action is rejected",
			mutate: withSecret(func(ns *sandboxv1alpha1.NetworkSecret) { ns.OnViolation = "Ignore" }),
			want:   []string{"spec.network.secrets[0].onViolation", `Unsupported value: "Ignore"`}},
		{name: "two network secrets with the same envVar are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				withSecret(func(*sandboxv1alpha1.NetworkSecret) {})(s)
				s.Spec.Network.Secrets = append(s.Spec.Network.Secrets, s.Spec.Network.Secrets[0])
			},
			want: []string{"spec.network.secrets[1]", "Duplicate value"}},

		// registry
		{name: "a CA bundle key with '/' is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Registry = &sandboxv1alpha1.RegistryOptions{CABundleRef: &sandboxv1alpha1.ConfigMapKeyReference{Name: "ca", Key: "certs/ca.crt"}}
			},
			want: []string{"spec.registry.caBundleRef.key", "should match"}},
		{name: "a CA bundle reference without a name is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.Registry = &sandboxv1alpha1.RegistryOptions{CABundleRef: &sandboxv1alpha1.ConfigMapKeyReference{Key: "ca.crt"}}
			},
			want: []string{"spec.registry.caBundleRef.name", "at least 1 chars long"}},

		// enums and scalars at the top of the spec
		{name: "an unknown imagePullPolicy is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.ImagePullPolicy = "Sometimes" },
			want:   []string{"spec.imagePullPolicy", `Unsupported value: "Sometimes"`}},
		{name: "an unknown state is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.State = "Paused" },
			want:   []string{"spec.state", `Unsupported value: "Paused"`}},
		{name: "an unknown stop mode is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.StopPolicy.Mode = "Hibernate" },
			want:   []string{"spec.stopPolicy.mode", `Unsupported value: "Hibernate"`}},
		{name: "a grace period over an hour is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.StopPolicy.GracePeriodSeconds = ptr(int64(3601)) },
			want:   []string{"spec.stopPolicy.gracePeriodSeconds", "less than or equal to 3600"}},
		{name: "a negative grace period is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.StopPolicy.GracePeriodSeconds = ptr(int64(-1)) },
			want:   []string{"spec.stopPolicy.gracePeriodSeconds", "greater than or equal to 0"}},
		{name: "an unknown restartPolicy is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.RestartPolicy = "Sometimes" },
			want:   []string{"spec.restartPolicy", `Unsupported value: "Sometimes"`}},
		{name: "an unknown accelerator is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Accelerator = "GPU" },
			want:   []string{"spec.accelerator", `Unsupported value: "GPU"`}},
		{name: "a lowercase accelerator is rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) { s.Spec.Accelerator = "kvm" },
			want:   []string{"spec.accelerator", `Unsupported value: "kvm"`}},
		{name: "more than 32 nodeSelector entries are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.NodeSelector = map[string]string{}
				for i := range 33 {
					s.Spec.NodeSelector[fmt.Sprintf("k%d", i)] = "v"
				}
			},
			want: []string{"spec.nodeSelector", "Too many"}},
		{name: "more than 16 imagePullSecrets are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				for i := range 17 {
					s.Spec.ImagePullSecrets = append(s.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: fmt.Sprintf("pull-%d", i)})
				}
			},
			want: []string{"spec.imagePullSecrets", "Too many"}},
		{name: "more than 32 tolerations are rejected",
			mutate: func(s *sandboxv1alpha1.Sandbox) {
				for i := range 33 {
					s.Spec.Tolerations = append(s.Spec.Tolerations, corev1.Toleration{Key: fmt.Sprintf("k%d", i), Operator: corev1.TolerationOpExists})
				}
			},
			want: []string{"spec.tolerations", "Too many"}},
	}
}

// setRaw sets a nested field of an unstructured object, creating the maps
// on the way.
func setRaw(obj map[string]any, value any, fields ...string) {
	if err := unstructured.SetNestedField(obj, value, fields...); err != nil {
		panic(err)
	}
}

// create sends s, after raw (if any) has edited its unstructured form.
func create(ctx context.Context, s *sandboxv1alpha1.Sandbox, raw func(map[string]any)) error {
	if raw == nil {
		return k8sClient.Create(ctx, s)
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(sandboxv1alpha1.SchemeGroupVersion.WithKind("Sandbox"))
	raw(u.Object)
	return k8sClient.Create(ctx, u)
}

func TestInvalidSandboxesAreRejected(t *testing.T) {
	requireEnv(t)
	cases := invalidCases()
	if len(cases) < 60 {
		t.Fatalf("only %d invalid cases", len(cases))
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			s := baseSandbox(fmt.Sprintf("case-%d", i))
			if tc.mutate != nil {
				tc.mutate(s)
			}
			err := create(ctx, s, tc.raw)
			g.Expect(err).To(HaveOccurred(), "the API server accepted the invalid Sandbox")
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want an Invalid error, got %v", err)
			t.Log(err)
			for _, w := range tc.want {
				g.Expect(err.Error()).To(ContainSubstring(w))
			}
		})
	}
}

func TestMinimalSandboxGetsDefaults(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Only spec.image, sent as unstructured so that no empty structs
	// (resources, stopPolicy) travel with it: the server must fill them.
	u := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": "minimal", "namespace": testNamespace},
		"spec":     map[string]any{"image": validImage},
	}}
	u.SetGroupVersionKind(sandboxv1alpha1.SchemeGroupVersion.WithKind("Sandbox"))
	g.Expect(k8sClient.Create(ctx, u)).To(Succeed())

	var got sandboxv1alpha1.Sandbox
	g.Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got)).To(Succeed())
	assertDefaults(g, &got)

	// The typed form (which sends resources: {} and stopPolicy: {}) gets
	// the same defaults, on the object Create returns.
	typed := baseSandbox("minimal-typed")
	g.Expect(k8sClient.Create(ctx, typed)).To(Succeed())
	assertDefaults(g, typed)

	// And so does what is read back.
	var read sandboxv1alpha1.Sandbox
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(typed), &read)).To(Succeed())
	assertDefaults(g, &read)
}

func assertDefaults(g *WithT, s *sandboxv1alpha1.Sandbox) {
	g.Expect(s.Spec.Image).To(Equal(validImage))
	g.Expect(s.Spec.Resources).To(Equal(sandboxv1alpha1.SandboxResources{CPUs: 1, MemoryMiB: 512}))
	g.Expect(s.Spec.State).To(Equal(sandboxv1alpha1.DesiredStateRunning))
	g.Expect(s.Spec.ImagePullPolicy).To(Equal(sandboxv1alpha1.PullIfNotPresent))
	g.Expect(s.Spec.StopPolicy.Mode).To(Equal(sandboxv1alpha1.StopGraceful))
	g.Expect(s.Spec.StopPolicy.GracePeriodSeconds).To(HaveValue(BeEquivalentTo(10)))
	g.Expect(s.Spec.RestartPolicy).To(Equal(sandboxv1alpha1.RestartNever))
	g.Expect(s.Spec.Accelerator).To(Equal(sandboxv1alpha1.AcceleratorAny))
	// Optional blocks stay unset.
	g.Expect(s.Spec.RootDisk).To(BeNil())
	g.Expect(s.Spec.Runtime).To(BeNil())
	g.Expect(s.Spec.Network).To(BeNil())
	g.Expect(s.Spec.Lifecycle).To(BeNil())
}

// maximalSandbox sets every field of the spec to a valid value, and every
// field that has a default explicitly, so that the server returns exactly
// what was sent.
func maximalSandbox(name string) *sandboxv1alpha1.Sandbox {
	return &sandboxv1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec: sandboxv1alpha1.SandboxSpec{
			Image:     "registry.example.com:5000/team/app-server:v1.2.3@" + digest,
			RootDisk:  &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumMemory, SizeMiB: ptr(int32(2048))},
			Resources: sandboxv1alpha1.SandboxResources{CPUs: 64, MemoryMiB: 4096},
			Runtime: &sandboxv1alpha1.RuntimeOptions{
				Workdir: gp("/srv/app"),
				Shell:   gp("/bin/bash"),
				Scripts: map[string]string{
					"setup.sh": "#!/bin/sh\necho setting up\n",
					"run":      "exec python3 -m http.server",
					"Tool_2-x": "true",
				},
				Entrypoint: []string{"/usr/bin/python3"},
				Cmd:        []string{"-m", "http.server", "8080"},
				Hostname:   "app.sandbox-1",
				User:       "1000:1000",
				LogLevel:   "debug",
			},
			Env: []sandboxv1alpha1.EnvVar{
				{Name: "PLAIN", Value: "value with spaces"},
				{Name: "EMPTY"},
				{Name: "FROM_SECRET", ValueFrom: &sandboxv1alpha1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password", Optional: ptr(true)}}},
				{Name: "_FROM_CONFIGMAP", ValueFrom: &sandboxv1alpha1.EnvVarSource{ConfigMapKeyRef: configMapKey("settings", "level")}},
			},
			Lifecycle: &sandboxv1alpha1.Lifecycle{Ephemeral: true, MaxDurationSeconds: ptr(int64(31536000)), IdleTimeoutSeconds: ptr(int64(1))},
			Mounts: []sandboxv1alpha1.Mount{
				{GuestPath: "/scratch", EmptyDir: &sandboxv1alpha1.EmptyDirMount{Medium: sandboxv1alpha1.DiskMediumMemory, SizeMiB: ptr(int32(128))}},
				{GuestPath: "/var/cache/app", EmptyDir: &sandboxv1alpha1.EmptyDirMount{Medium: sandboxv1alpha1.DiskMediumDisk, SizeMiB: ptr(int32(1048576))}},
				{GuestPath: "/data", ReadOnly: ptr(false), PersistentVolumeClaim: &sandboxv1alpha1.PVCMount{ClaimName: "data"}},
				{GuestPath: "/etc/app", ReadOnly: ptr(true), ConfigMap: &sandboxv1alpha1.ObjectMount{Name: "app-config", Optional: ptr(true)}},
				{GuestPath: "/run/secrets/app", Secret: &sandboxv1alpha1.ObjectMount{Name: "app-secret", Optional: ptr(false)}},
				{GuestPath: "/..data/x..y/.../tmp", EmptyDir: &sandboxv1alpha1.EmptyDirMount{Medium: sandboxv1alpha1.DiskMediumDisk}},
			},
			Patches: []sandboxv1alpha1.Patch{
				{Type: sandboxv1alpha1.PatchText, Path: "/etc/motd", Content: ptr("welcome\n"), Mode: ptr(int32(0o644)), Replace: ptr(true)},
				{Type: sandboxv1alpha1.PatchText, Path: "/etc/app/token", ContentFrom: &sandboxv1alpha1.EnvVarSource{SecretKeyRef: secretKey("creds", "token")}},
				{Type: sandboxv1alpha1.PatchFile, Path: "/usr/local/bin/tool", ContentFrom: &sandboxv1alpha1.EnvVarSource{ConfigMapKeyRef: configMapKey("tools", "tool")}, Mode: ptr(int32(0o7777)), Replace: ptr(false)},
				{Type: sandboxv1alpha1.PatchSymlink, Path: "/usr/bin/py", Target: ptr("python3"), Replace: ptr(true)},
				{Type: sandboxv1alpha1.PatchMkdir, Path: "/srv/app/data", Mode: ptr(int32(0))},
				{Type: sandboxv1alpha1.PatchRemove, Path: "/etc/nologin"},
				{Type: sandboxv1alpha1.PatchAppend, Path: "/etc/hosts", Content: ptr("10.0.0.1 db\n")},
				{Type: sandboxv1alpha1.PatchAppend, Path: "/etc/profile", ContentFrom: &sandboxv1alpha1.EnvVarSource{ConfigMapKeyRef: configMapKey("profile", "extra")}},
			},
			Rlimits: []sandboxv1alpha1.Rlimit{
				{Resource: "nofile", Soft: 1024, Hard: 4096},
				{Resource: "nproc", Soft: 512, Hard: 512},
				{Resource: "core", Soft: 0, Hard: 0},
			},
			Init: &sandboxv1alpha1.InitHandoff{
				Cmd:  "/lib/systemd/systemd",
				Args: []string{"--log-level=info", "--unit=multi-user.target"},
				Env:  []sandboxv1alpha1.EnvVar{{Name: "container", Value: "microvm"}},
			},
			Network: &sandboxv1alpha1.NetworkSpec{
				Enabled: ptr(true),
				Ports: []sandboxv1alpha1.PublishedPort{
					{Name: "http", GuestPort: 8080, HostPort: 18080, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "0.0.0.0"},
					{Name: "http-udp", GuestPort: 8080, HostPort: 18080, Protocol: sandboxv1alpha1.ProtocolUDP, HostIP: "127.0.0.1"},
					{Name: "dns", GuestPort: 53, HostPort: 65535, Protocol: sandboxv1alpha1.ProtocolUDP, HostIP: "::1"},
					{GuestPort: 65535, HostPort: 1, Protocol: sandboxv1alpha1.ProtocolTCP, HostIP: "2001:db8::10"},
				},
				Policy: &sandboxv1alpha1.NetworkPolicy{
					DefaultEgress: sandboxv1alpha1.PolicyDeny,
					Rules: []sandboxv1alpha1.NetworkRule{
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{CIDR: "10.0.0.0/8"},
							Protocols: []sandboxv1alpha1.RuleProtocol{"TCP", "UDP"},
							Ports:     []sandboxv1alpha1.PortRange{{Start: 443}, {Start: 8000, End: ptr(int32(8100))}, {Start: 9000, End: ptr(int32(9000))}}},
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{CIDR: "2001:db8::/32"}, Protocols: []sandboxv1alpha1.RuleProtocol{"ICMP"}},
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{Domain: "api.example.com"}},
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{Domain: "localhost"}},
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{DomainSuffix: ".example.org"}},
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{DomainSuffix: "example.net"}},
						{Action: sandboxv1alpha1.PolicyDeny, Destination: sandboxv1alpha1.NetworkDestination{Group: "Metadata"}},
						{Action: sandboxv1alpha1.PolicyAllow, Destination: sandboxv1alpha1.NetworkDestination{Group: "Public"}, Ports: []sandboxv1alpha1.PortRange{{Start: 1, End: ptr(int32(65535))}}},
					},
				},
				DNS: &sandboxv1alpha1.DNSConfig{
					Nameservers:        []string{"1.1.1.1", "8.8.8.8:53", "[2001:4860:4860::8888]:53"},
					RebindProtection:   ptr(false),
					QueryTimeoutMillis: 60000,
				},
				Secrets: []sandboxv1alpha1.NetworkSecret{
					{
						EnvVar:       "API_TOKEN",
						SecretKeyRef: *secretKey("creds", "api-token"),
						Placeholder:  "PLACEHOLDER_API_TOKEN",
						AllowedHosts: []string{"api.example.com", "*.example.org"},
						Injection:    &sandboxv1alpha1.SecretInjection{Headers: ptr(true), BasicAuth: ptr(false), QueryParams: true, Body: true},
						OnViolation:  "BlockAndTerminate",
					},
					{
						EnvVar:       "OTHER_TOKEN",
						SecretKeyRef: *secretKey("creds", "other"),
						Placeholder:  "$SANDBOX_SECRET_OTHER_TOKEN",
						AllowedHosts: []string{"other.example.com"},
						Injection:    &sandboxv1alpha1.SecretInjection{Headers: ptr(false), BasicAuth: ptr(true)},
						OnViolation:  "Block",
					},
				},
				TrustHostCAs: true,
			},
			ImagePullPolicy:  sandboxv1alpha1.PullAlways,
			ImagePullSecrets: []corev1.LocalObjectReference{{Name: "regcred"}, {Name: "mirror-cred"}},
			Registry: &sandboxv1alpha1.RegistryOptions{
				Insecure:    true,
				CABundleRef: &sandboxv1alpha1.ConfigMapKeyReference{Name: "registry-ca", Key: "ca.crt"},
			},
			State:         sandboxv1alpha1.DesiredStateStopped,
			StopPolicy:    sandboxv1alpha1.StopPolicy{Mode: sandboxv1alpha1.StopDrain, GracePeriodSeconds: ptr(int64(3600))},
			RestartPolicy: sandboxv1alpha1.RestartOnFailure,
			NodeSelector:  map[string]string{"topology.kubernetes.io/zone": "a", "sandbox.microvm.dev/pool": "gpu"},
			Tolerations: []corev1.Toleration{
				{Key: "sandbox.microvm.dev/dedicated", Operator: corev1.TolerationOpEqual, Value: "true", Effect: corev1.TaintEffectNoSchedule},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(30))},
			},
			Accelerator: sandboxv1alpha1.AcceleratorKVM,
		},
	}
}

func TestMaximalSandboxIsAccepted(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s := maximalSandbox("maximal")
	want := s.Spec.DeepCopy()
	g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
	// Nothing was pruned or defaulted differently.
	g.Expect(s.Spec).To(Equal(*want))

	var read sandboxv1alpha1.Sandbox
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), &read)).To(Succeed())
	g.Expect(read.Spec).To(Equal(*want))

	// Defaults inside the optional blocks are filled when left unset.
	partial := maximalSandbox("maximal-defaults")
	partial.Spec.RootDisk.Medium = ""
	partial.Spec.Mounts[0].EmptyDir.Medium = ""
	partial.Spec.Network.Enabled = nil
	partial.Spec.Network.Ports[0].Protocol = ""
	partial.Spec.Network.Ports[0].HostIP = ""
	partial.Spec.Network.Policy.DefaultEgress = ""
	partial.Spec.Network.DNS.RebindProtection = nil
	partial.Spec.Network.DNS.QueryTimeoutMillis = 0
	partial.Spec.Network.Secrets[0].Injection = &sandboxv1alpha1.SecretInjection{}
	partial.Spec.Network.Secrets[0].OnViolation = ""
	g.Expect(k8sClient.Create(ctx, partial)).To(Succeed())
	g.Expect(partial.Spec.RootDisk.Medium).To(Equal(sandboxv1alpha1.DiskMediumDisk))
	g.Expect(partial.Spec.Mounts[0].EmptyDir.Medium).To(Equal(sandboxv1alpha1.DiskMediumDisk))
	g.Expect(partial.Spec.Network.Enabled).To(HaveValue(BeTrue()))
	g.Expect(partial.Spec.Network.Ports[0].Protocol).To(Equal(sandboxv1alpha1.ProtocolTCP))
	g.Expect(partial.Spec.Network.Ports[0].HostIP).To(Equal("127.0.0.1"))
	g.Expect(partial.Spec.Network.Policy.DefaultEgress).To(Equal(sandboxv1alpha1.PolicyDeny))
	g.Expect(partial.Spec.Network.DNS.RebindProtection).To(HaveValue(BeTrue()))
	g.Expect(partial.Spec.Network.DNS.QueryTimeoutMillis).To(BeEquivalentTo(5000))
	g.Expect(partial.Spec.Network.Secrets[0].Injection.Headers).To(HaveValue(BeTrue()))
	g.Expect(partial.Spec.Network.Secrets[0].Injection.BasicAuth).To(HaveValue(BeTrue()))
	g.Expect(partial.Spec.Network.Secrets[0].OnViolation).To(BeEquivalentTo("BlockAndLog"))
}

// TestValidEdgeCases are inputs near the rules' edges that must be accepted.
func TestValidEdgeCasesAreAccepted(t *testing.T) {
	requireEnv(t)
	cases := []struct {
		name   string
		mutate func(s *sandboxv1alpha1.Sandbox)
	}{
		{"an image with a registry port and a digest", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "localhost:5000/app@" + digest }},
		{"a single-component image name", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "alpine" }},
		{"an image with '__' in the repository", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "ghcr.io/org/my__app:Latest_1.0" }},
		{"64 cpus with 64 MiB", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.Resources = sandboxv1alpha1.SandboxResources{CPUs: 64, MemoryMiB: 64}
		}},
		{"a Memory root disk exactly the size of the guest memory", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumMemory, SizeMiB: ptr(int32(512))}
		}},
		{"a Disk root disk larger than the guest memory", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumDisk, SizeMiB: ptr(int32(8192))}
		}},
		{"a Memory root disk without a size", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{Medium: sandboxv1alpha1.DiskMediumMemory}
		}},
		{"the init command auto", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Init = &sandboxv1alpha1.InitHandoff{Cmd: "auto"} }},
		{"a disabled network with nothing else", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false)}
		}},
		{"an empty network block", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Network = &sandboxv1alpha1.NetworkSpec{} }},
		{"the same host port for TCP and UDP", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Ports: []sandboxv1alpha1.PublishedPort{
				{GuestPort: 53, HostPort: 5353, Protocol: sandboxv1alpha1.ProtocolTCP},
				{GuestPort: 53, HostPort: 5353, Protocol: sandboxv1alpha1.ProtocolUDP},
			}}
		}},
		{"an IPv6 nameserver without a port", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.Network = &sandboxv1alpha1.NetworkSpec{DNS: &sandboxv1alpha1.DNSConfig{Nameservers: []string{"2606:4700:4700::1111"}}}
		}},
		{"a network secret whose envVar is not in env", func(s *sandboxv1alpha1.Sandbox) {
			withSecret(func(*sandboxv1alpha1.NetworkSecret) {})(s)
			s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "OTHER", Value: "x"}}
		}},
		{"a configMap mount marked readOnly", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.Mounts = []sandboxv1alpha1.Mount{{GuestPath: "/etc/app", ReadOnly: ptr(true), ConfigMap: &sandboxv1alpha1.ObjectMount{Name: "app"}}}
		}},
		{"a grace period of 0 seconds", func(s *sandboxv1alpha1.Sandbox) { s.Spec.StopPolicy.GracePeriodSeconds = ptr(int64(0)) }},
		{"a path with dots that are not '..' segments", func(s *sandboxv1alpha1.Sandbox) {
			s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Workdir: gp("/srv/..hidden/a..b/...")}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s := baseSandbox(fmt.Sprintf("valid-%d", i))
			tc.mutate(s)
			g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
		})
	}
}

// setPhase writes status.phase through the status subresource.
func setPhase(ctx context.Context, g *WithT, key client.ObjectKey, phase sandboxv1alpha1.SandboxPhase) {
	var s sandboxv1alpha1.Sandbox
	g.Expect(k8sClient.Get(ctx, key, &s)).To(Succeed())
	s.Status.Phase = phase
	g.Expect(k8sClient.Status().Update(ctx, &s)).To(Succeed())
	g.Expect(k8sClient.Get(ctx, key, &s)).To(Succeed())
	g.Expect(s.Status.Phase).To(Equal(phase))
}

// update reads the Sandbox, applies f and writes it back.
func update(ctx context.Context, g *WithT, key client.ObjectKey, f func(s *sandboxv1alpha1.Sandbox)) error {
	var s sandboxv1alpha1.Sandbox
	g.Expect(k8sClient.Get(ctx, key, &s)).To(Succeed())
	f(&s)
	return k8sClient.Update(ctx, &s)
}

// frozenChanges edit each spec field that is immutable while a VM exists.
var frozenChanges = []struct {
	field  string
	mutate func(s *sandboxv1alpha1.Sandbox)
}{
	{"spec.image", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "docker.io/library/python:3.13" }},
	{"spec.resources", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Resources.MemoryMiB = 1024 }},
	{"spec.resources", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Resources.CPUs = 2 }},
	{"spec.rootDisk", func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.RootDisk = &sandboxv1alpha1.RootDisk{SizeMiB: ptr(int32(100))}
	}},
	{"spec.runtime", func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.Runtime = &sandboxv1alpha1.RuntimeOptions{Hostname: "changed"}
	}},
	{"spec.env", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Env[0].Value = "2" }},
	{"spec.env", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Env = nil }},
	{"spec.mounts", func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.Mounts = []sandboxv1alpha1.Mount{{GuestPath: "/data", EmptyDir: &sandboxv1alpha1.EmptyDirMount{}}}
	}},
	{"spec.patches", func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.Patches = []sandboxv1alpha1.Patch{{Type: sandboxv1alpha1.PatchMkdir, Path: "/srv"}}
	}},
	{"spec.rlimits", func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.Rlimits = []sandboxv1alpha1.Rlimit{{Resource: "nofile", Soft: 1, Hard: 1}}
	}},
	{"spec.init", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Init = &sandboxv1alpha1.InitHandoff{Cmd: "auto"} }},
	{"spec.network", func(s *sandboxv1alpha1.Sandbox) { s.Spec.Network = &sandboxv1alpha1.NetworkSpec{Enabled: ptr(false)} }},
}

func TestSpecIsFrozenWhileTheVMExists(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	s := baseSandbox("immutable")
	s.Spec.Env = []sandboxv1alpha1.EnvVar{{Name: "A", Value: "1"}}
	g.Expect(k8sClient.Create(ctx, s)).To(Succeed())
	key := client.ObjectKeyFromObject(s)

	// Without a phase (nothing has observed the Sandbox yet) the spec may change.
	g.Expect(update(ctx, g, key, func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "docker.io/library/python:3.11" })).To(Succeed())

	setPhase(ctx, g, key, sandboxv1alpha1.PhaseRunning)

	for _, c := range frozenChanges {
		err := update(ctx, g, key, c.mutate)
		g.Expect(err).To(HaveOccurred(), "changing %s while Running was accepted", c.field)
		g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want an Invalid error, got %v", err)
		g.Expect(err.Error()).To(ContainSubstring(c.field + ": "))
		g.Expect(err.Error()).To(ContainSubstring(immutableMsg))
	}

	// The fields that may change at any time.
	g.Expect(update(ctx, g, key, func(s *sandboxv1alpha1.Sandbox) {
		s.Spec.StopPolicy = sandboxv1alpha1.StopPolicy{Mode: sandboxv1alpha1.StopKill, GracePeriodSeconds: ptr(int64(0))}
		s.Spec.Lifecycle = &sandboxv1alpha1.Lifecycle{IdleTimeoutSeconds: ptr(int64(60))}
		s.Spec.RestartPolicy = sandboxv1alpha1.RestartAlways
		s.Labels = map[string]string{"touched": "yes"}
	})).To(Succeed())
	g.Expect(update(ctx, g, key, func(s *sandboxv1alpha1.Sandbox) { s.Spec.State = sandboxv1alpha1.DesiredStateStopped })).To(Succeed())

	// Starting and Draining freeze the spec too.
	for _, phase := range []sandboxv1alpha1.SandboxPhase{sandboxv1alpha1.PhaseStarting, sandboxv1alpha1.PhaseDraining} {
		setPhase(ctx, g, key, phase)
		err := update(ctx, g, key, func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "docker.io/library/python:3.13" })
		g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "phase %s: want an Invalid error, got %v", phase, err)
		g.Expect(err.Error()).To(ContainSubstring("spec.image: "))
		g.Expect(err.Error()).To(ContainSubstring(immutableMsg))
	}

	// Once the VM is gone everything may change.
	setPhase(ctx, g, key, sandboxv1alpha1.PhaseStopped)
	g.Expect(update(ctx, g, key, func(s *sandboxv1alpha1.Sandbox) { s.Spec.Image = "docker.io/library/python:3.13" })).To(Succeed())
	for _, c := range frozenChanges {
		g.Expect(update(ctx, g, key, c.mutate)).To(Succeed(), "changing %s while Stopped", c.field)
	}

	var got sandboxv1alpha1.Sandbox
	g.Expect(k8sClient.Get(ctx, key, &got)).To(Succeed())
	g.Expect(got.Spec.Image).To(Equal("docker.io/library/python:3.13"))
	g.Expect(got.Spec.State).To(Equal(sandboxv1alpha1.DesiredStateStopped))

	// Crashed is terminal as well.
	setPhase(ctx, g, key, sandboxv1alpha1.PhaseCrashed)
	g.Expect(update(ctx, g, key, func(s *sandboxv1alpha1.Sandbox) { s.Spec.Resources.CPUs = 8 })).To(Succeed())
}
