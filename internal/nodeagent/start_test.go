package nodeagent

import (
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/utils/ptr"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
	"github.com/microvm-dev/sandbox-operator/internal/image"
)

func TestMainProcess(t *testing.T) {
	img := image.Config{
		Entrypoint: []string{"/entry"}, Cmd: []string{"a", "b"},
		Env: []string{"PATH=/bin", "FOO=image", "KEEP=1"}, WorkingDir: "/app",
	}
	for _, tc := range []struct {
		name    string
		runtime *sandboxv1alpha1.RuntimeOptions
		env     []sandboxv1alpha1.EnvVar
		img     image.Config
		want    *protocol.Start
	}{
		{
			name: "the image's config",
			img:  img,
			want: &protocol.Start{Argv: []string{"/entry", "a", "b"}, Env: []string{"PATH=/bin", "FOO=image", "KEEP=1"}, Dir: "/app"},
		},
		{
			name:    "spec.env replaces in place and appends; valueFrom is left out",
			img:     img,
			env:     []sandboxv1alpha1.EnvVar{{Name: "FOO", Value: "bar"}, {Name: "NEW"}, {Name: "SECRET", ValueFrom: &sandboxv1alpha1.EnvVarSource{}}},
			want:    &protocol.Start{Argv: []string{"/entry", "a", "b"}, Env: []string{"PATH=/bin", "FOO=bar", "KEEP=1", "NEW="}, Dir: "/app"},
			runtime: nil,
		},
		{
			name:    "an entrypoint drops the image's cmd; workdir replaces WorkingDir",
			img:     img,
			runtime: &sandboxv1alpha1.RuntimeOptions{Entrypoint: []string{"/x"}, Workdir: ptr.To[sandboxv1alpha1.GuestPath]("/w")},
			want:    &protocol.Start{Argv: []string{"/x"}, Env: img.Env, Dir: "/w"},
		},
		{
			name:    "cmd replaces the image's cmd",
			img:     img,
			runtime: &sandboxv1alpha1.RuntimeOptions{Cmd: []string{"c"}},
			want:    &protocol.Start{Argv: []string{"/entry", "c"}, Env: img.Env, Dir: "/app"},
		},
		{
			name:    "a default PATH and dir",
			runtime: &sandboxv1alpha1.RuntimeOptions{Entrypoint: []string{"sh"}},
			want:    &protocol.Start{Argv: []string{"sh"}, Env: []string{"PATH=" + defaultPath}, Dir: "/"},
		},
		{name: "nothing to run", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sbx := &sandboxv1alpha1.Sandbox{Spec: sandboxv1alpha1.SandboxSpec{Runtime: tc.runtime, Env: tc.env}}
			NewWithT(t).Expect(mainProcess(sbx, tc.img)).To(Equal(tc.want))
		})
	}
}

func TestMainExitCode(t *testing.T) {
	g := NewWithT(t)
	g.Expect(mainExitCode(protocol.Exit{Code: 3})).To(Equal(int32(3)))
	g.Expect(mainExitCode(protocol.Exit{Code: -1, Signal: "SIGKILL"})).To(Equal(int32(137)))
	g.Expect(mainExitMessage(protocol.Exit{Code: 3}, "")).To(Equal("The main process exited with code 3"))
}
