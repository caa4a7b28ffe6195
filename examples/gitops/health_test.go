package gitops

import (
	"os"
	"testing"

	. "github.com/onsi/gomega"
	lua "github.com/yuin/gopher-lua"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	sandboxv1alpha1 "github.com/microvm-dev/sandbox-operator/api/v1alpha1"
)

// healthOf runs docs/gitops/sandbox-health.lua the way Argo CD runs a
// health customization (gopher-lua, the interpreter Argo CD embeds, with
// the object as the global obj) and returns hs.status and hs.message.
func healthOf(t *testing.T, script string, s *sandboxv1alpha1.Sandbox) (string, string) {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	if err != nil {
		t.Fatal(err)
	}
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		t.Fatalf("the health script fails: %v", err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the health script returned %v, not a table", L.Get(-1))
	}
	return lua.LVAsString(hs.RawGetString("status")), lua.LVAsString(hs.RawGetString("message"))
}

// toLua converts a JSON-like value to Lua (tables for maps and arrays, as
// Argo CD's converter does).
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case int64:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

func TestTheArgoCDHealthCheckFollowsThePhase(t *testing.T) {
	script, err := os.ReadFile("../../docs/gitops/sandbox-health.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		mod    func(*sandboxv1alpha1.Sandbox)
		status string
		msg    string
	}{
		{name: "no status yet: Progressing", mod: func(*sandboxv1alpha1.Sandbox) {}, status: "Progressing"},
		{name: "a spec the manager has not observed: Progressing", status: "Progressing", msg: "generation 2",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Generation, s.Status.ObservedGeneration, s.Status.Phase = 2, 1, sandboxv1alpha1.PhaseRunning
			}},
		{name: "Starting: Progressing, with the Ready message", status: "Progressing", msg: "pulling",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase = sandboxv1alpha1.PhaseStarting
				s.Status.Conditions = readyCond("False", "Starting", "pulling the image")
			}},
		{name: "Running: Healthy", status: "Healthy",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase = sandboxv1alpha1.PhaseRunning
				s.Status.Conditions = readyCond("True", "Running", "The guest on node a answers")
			}},
		{name: "stopped as the spec asks: Suspended", status: "Suspended",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Spec.State = sandboxv1alpha1.DesiredStateStopped
				s.Status.Phase = sandboxv1alpha1.PhaseStopped
				s.Status.TerminationReason = sandboxv1alpha1.TerminationShutdownRequested
			}},
		{name: "completed: Healthy", status: "Healthy",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase, s.Status.TerminationReason = sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.TerminationCompleted
			}},
		{name: "failed: Degraded", status: "Degraded",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase, s.Status.TerminationReason = sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.TerminationFailed
			}},
		{name: "stopped for a secret violation: Degraded", status: "Degraded",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase, s.Status.TerminationReason = sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.TerminationPolicyViolation
			}},
		{name: "maxDurationSeconds reached: Suspended", status: "Suspended",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase, s.Status.TerminationReason = sandboxv1alpha1.PhaseStopped, sandboxv1alpha1.TerminationMaxDurationExceeded
			}},
		{name: "Crashed: Degraded", status: "Degraded", msg: "NodeLost",
			mod: func(s *sandboxv1alpha1.Sandbox) {
				s.Status.Phase, s.Status.TerminationReason = sandboxv1alpha1.PhaseCrashed, sandboxv1alpha1.TerminationNodeLost
				s.Status.Conditions = readyCond("False", "Crashed", "NodeLost: node a stopped renewing its Lease")
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := NewWithT(t)
			s := &sandboxv1alpha1.Sandbox{}
			s.Name, s.Namespace, s.Generation = "demo", "team", 1
			s.Spec.Image = "registry.example/app:1"
			s.Status.ObservedGeneration = 1
			c.mod(s)
			if c.name == "no status yet: Progressing" {
				s.Status = sandboxv1alpha1.SandboxStatus{}
			}
			status, msg := healthOf(t, string(script), s)
			g.Expect(status).To(Equal(c.status))
			g.Expect(msg).To(ContainSubstring(c.msg))
		})
	}
}

func readyCond(status, reason, msg string) []metav1.Condition {
	return []metav1.Condition{{Type: "Ready", Status: metav1.ConditionStatus(status), Reason: reason, Message: msg}}
}

func TestTheArgoCDConfigMapCarriesTheDocumentedScript(t *testing.T) {
	g := NewWithT(t)
	script, err := os.ReadFile("../../docs/gitops/sandbox-health.lua")
	g.Expect(err).NotTo(HaveOccurred())
	b, err := os.ReadFile("argocd/argocd-cm-health.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	var cm struct {
		Data map[string]string `json:"data"`
	}
	g.Expect(yaml.UnmarshalStrict(b, &cm)).To(Succeed())
	g.Expect(cm.Data).To(HaveKeyWithValue("resource.customizations.health.sandbox.microvm.dev_Sandbox", string(script)))
}

func TestTheExampleSandboxesAreValidSandboxes(t *testing.T) {
	g := NewWithT(t)
	b, err := os.ReadFile("sandboxes/agent-sandbox.yaml")
	g.Expect(err).NotTo(HaveOccurred())
	s := &sandboxv1alpha1.Sandbox{}
	g.Expect(yaml.UnmarshalStrict(b, s)).To(Succeed(), "every field is a field of the API")
	g.Expect(s.Kind).To(Equal("Sandbox"))
	g.Expect(s.Spec.Network.Secrets).To(HaveLen(1))
}
