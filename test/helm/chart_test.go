package helm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/microvm-dev/sandbox-operator/test/internal/manifest"
)

const (
	root  = "../.."
	chart = root + "/charts/sandbox-operator"
	// release and namespace of the rendered chart. The namespace is not the
	// default install's sandbox-system, so that every place the chart must
	// template it shows.
	release   = "sandbox-operator"
	namespace = "sbx-install"
	// markerNamespace is the namespace the +kubebuilder:rbac markers (and so
	// config/rbac) name for the operator's own.
	markerNamespace = "sandbox-system"
)

// allOptions switches on every optional part of the chart.
var allOptions = filepath.Join("testdata", "all-options.yaml")

// TestChart lints and renders the chart with the pinned helm, checks the
// rendering (wiring between objects, RBAC equal to config/rbac's, CRDs equal
// to config/crd's, the values that matter on a real cluster), then applies it
// to a real kube-apiserver with server-side dry-run and for real, with the
// defaults and then with every option on (an upgrade).
func TestChart(t *testing.T) {
	helm := manifest.Binary(t, "HELM", filepath.Join(root, "bin", "helm"), "run `make helm` (make test builds it)")
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s")
	}
	kubectl := manifest.Binary(t, "", filepath.Join(assets, "kubectl"), "run `make control-plane` or set KUBEBUILDER_ASSETS")

	t.Run("helm lint passes with the defaults and with every option", func(t *testing.T) {
		g := NewWithT(t)
		out, err := manifest.Run(helm, "lint", "--strict", chart)
		g.Expect(err).NotTo(HaveOccurred(), out)
		out, err = manifest.Run(helm, "lint", "--strict", chart, "--namespace", namespace, "-f", allOptions)
		g.Expect(err).NotTo(HaveOccurred(), out)
	})

	t.Run("values.schema.json refuses wrong types and unknown values", func(t *testing.T) {
		for _, tc := range []struct{ set, want string }{
			{"nodeAgent.allowEmulation=yes", "want boolean"},
			{"nodeAgent.accelerator=hvf", "nodeAgent/accelerator"},
			{"manager.replicas=2", "additional properties 'replicas' not allowed"},
			{"nodeAgent.cgroupParent=/sys/fs/cgroup/x", "nodeAgent/cgroupParent"},
			{"access.certManager.issuerRef.kind=Foo", "value must be one of 'Issuer', 'ClusterIssuer'"},
			{"access.certManager.issuerRef.kind=ClusterIssuer", "/access/certManager/issuerRef': missing property 'name'"},
			{"access.certManager.duration=90d", "access/certManager/duration"},
		} {
			out, err := manifest.Run(helm, "template", release, chart, "--set-string", tc.set)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("helm template --set-string %s: want an error with %q, got err=%v:\n%s", tc.set, tc.want, err, out)
			}
		}
	})

	t.Run("combinations the schema cannot see are refused with what to change", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--namespace", "kube-system"}, "not kube-system"},
			{[]string{"--set", `commonLabels.app\.kubernetes\.io/name=x`}, "commonLabels may not set app.kubernetes.io/name"},
			{[]string{"--set", `manager.podLabels.app\.kubernetes\.io/instance=x`}, "manager.podLabels may not set app.kubernetes.io/instance"},
			{[]string{"--set", "nodeAgent.metricsPort=10270"}, "nodeAgent.metricsPort and access.agentPort are both 10270"},
			{[]string{"--set", "manager.healthPort=8443"}, "manager.healthPort and access.port are both 8443"},
		} {
			out, err := manifest.Run(helm, append([]string{"template", release, chart}, tc.args...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("helm template %v: want an error with %q, got err=%v:\n%s", tc.args, tc.want, err, out)
			}
		}
	})

	defaults := render(t, helm)
	everything := render(t, helm, "-f", allOptions)

	t.Run("the rendering holds the expected objects in the release namespace", func(t *testing.T) {
		g := NewWithT(t)
		g.Expect(kinds(defaults)).To(Equal(map[string]int{
			"CustomResourceDefinition": 2, "ServiceAccount": 2, "ClusterRole": 2, "ClusterRoleBinding": 2,
			"Role": 3, "RoleBinding": 3, "Service": 3, "Deployment": 1, "DaemonSet": 1,
			"PodDisruptionBudget": 1, "APIService": 1,
			"ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1,
		}))
		g.Expect(kinds(everything)).To(And(HaveKeyWithValue("ServiceMonitor", 2), HaveKeyWithValue("Certificate", 1), HaveKeyWithValue("Issuer", 1)))
		for _, kind := range []string{"Deployment", "DaemonSet"} {
			labels := stringMap(one(t, everything, kind), "spec", "template", "metadata", "labels")
			g.Expect(labels).NotTo(Or(HaveKey("helm.sh/chart"), HaveKey("app.kubernetes.io/version")),
				"a %s's Pods are not restarted by a chart upgrade that changes nothing else", kind)
			g.Expect(labels).To(HaveKeyWithValue("example.com/team", "platform"))
		}
		for _, o := range everything {
			if o.GetKind() != "CustomResourceDefinition" { // crds/ is not templated
				g.Expect(o.GetLabels()).To(HaveKeyWithValue("example.com/team", "platform"), "commonLabels on %s %s", o.GetKind(), o.GetName())
			}
		}
		for _, o := range append(slices.Clone(defaults), everything...) {
			switch o.GetKind() {
			case "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "APIService",
				"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
				g.Expect(o.GetNamespace()).To(BeEmpty(), "%s %s is cluster-scoped", o.GetKind(), o.GetName())
			case "Role", "RoleBinding":
				g.Expect(o.GetNamespace()).To(BeElementOf(namespace, "kube-system"), "%s %s", o.GetKind(), o.GetName())
			default:
				g.Expect(o.GetNamespace()).To(Equal(namespace), "%s %s", o.GetKind(), o.GetName())
			}
		}
	})

	t.Run("the CRDs are config/crd/bases'", func(t *testing.T) {
		g := NewWithT(t)
		want := map[string]map[string]any{}
		files, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
		g.Expect(err).NotTo(HaveOccurred())
		for _, f := range files {
			for _, o := range manifest.DecodeFile(t, f) {
				want[o.GetName()] = o.Object
			}
		}
		got := map[string]map[string]any{}
		for _, o := range byKind(defaults, "CustomResourceDefinition") {
			got[o.GetName()] = o.Object
		}
		g.Expect(got).To(Equal(want))
	})

	t.Run("every identity's RBAC equals config/rbac's", func(t *testing.T) {
		g := NewWithT(t)
		var config []*unstructured.Unstructured
		for _, f := range []string{"role.yaml", "role_binding.yaml", "service_account.yaml", "leader_election_role.yaml",
			"leader_election_role_binding.yaml", "node-agent/role.yaml", "node-agent/role_binding.yaml", "node-agent/service_account.yaml"} {
			config = append(config, manifest.DecodeFile(t, filepath.Join(root, "config", "rbac", f))...)
		}
		configIdentities := map[string]string{"sandbox-manager": "manager", "sandbox-node-agent": "node-agent"}
		chartIdentities := map[string]string{
			podSpec(t, one(t, defaults, "Deployment")).ServiceAccountName: "manager",
			podSpec(t, one(t, defaults, "DaemonSet")).ServiceAccountName:  "node-agent",
		}
		want := grants(t, config, markerNamespace, configIdentities)
		got := grants(t, defaults, namespace, chartIdentities)
		g.Expect(want).To(HaveLen(5), "config/rbac: the manager's ClusterRole, its two Roles in %s and one in kube-system, the agent's ClusterRole", markerNamespace)
		g.Expect(got).To(Equal(want))
		g.Expect(grants(t, everything, namespace, chartIdentities)).To(Equal(want))
		for _, sa := range byKind(defaults, "ServiceAccount") {
			g.Expect(chartIdentities).To(HaveKey(sa.GetName()), "every ServiceAccount runs a workload")
		}
	})

	t.Run("the node restriction policy is config/admission's, for the release's agent ServiceAccount", func(t *testing.T) {
		g := NewWithT(t)
		agentSA := podSpec(t, one(t, defaults, "DaemonSet")).ServiceAccountName
		for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
			var want *unstructured.Unstructured
			for _, f := range []string{"node_agent_policy.yaml", "node_agent_policy_binding.yaml"} {
				for _, o := range manifest.DecodeFile(t, filepath.Join(root, "config", "admission", f)) {
					if o.GetKind() == kind {
						want = o
					}
				}
			}
			g.Expect(want).NotTo(BeNil(), kind)
			got := one(t, defaults, kind)
			wantJSON, err := json.Marshal(want.Object["spec"])
			g.Expect(err).NotTo(HaveOccurred())
			gotJSON, err := json.Marshal(got.Object["spec"])
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(string(gotJSON)).To(Equal(strings.ReplaceAll(string(wantJSON),
				"system:serviceaccount:sandbox-system:sandbox-node-agent", "system:serviceaccount:"+namespace+":"+agentSA)), kind)
		}
	})

	t.Run("the manager's flags, its access Service and the APIService agree", func(t *testing.T) {
		g := NewWithT(t)
		dep := one(t, defaults, "Deployment")
		spec := podSpec(t, dep)
		g.Expect(spec.Containers).To(HaveLen(1))
		c := spec.Containers[0]
		g.Expect(c.Image).To(Equal("sandbox-operator/manager:0.1.0"), "the tag defaults to the appVersion")
		g.Expect(c.SecurityContext.Privileged).To(BeNil())
		g.Expect(*c.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
		g.Expect(*spec.SecurityContext.RunAsNonRoot).To(BeTrue())

		svc := service(t, defaults, release+"-access")
		g.Expect(c.Args).To(ContainElements("--leader-elect=true", "--lease-namespace="+namespace,
			"--metrics-bind-address=:8080", "--health-probe-bind-address=:8081", "--zap-devel=false",
			"--access-bind-address=:8443", "--access-service="+svc.Name,
			fmt.Sprintf("--access-service-port=%d", svc.Spec.Ports[0].Port), "--access-register-apiservice=true"))
		g.Expect(c.Ports).To(ContainElement(And(HaveField("Name", svc.Spec.Ports[0].TargetPort.StrVal), HaveField("ContainerPort", int32(8443)))))
		g.Expect(svc.Spec.Selector).To(Equal(stringMap(dep, "spec", "selector", "matchLabels")))
		g.Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
		g.Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))

		as := one(t, defaults, "APIService")
		g.Expect(as.GetName()).To(Equal("v1alpha1.subresources.sandbox.microvm.dev"))
		ref, _, _ := unstructured.NestedMap(as.Object, "spec", "service")
		g.Expect(ref).To(Equal(map[string]any{"namespace": namespace, "name": svc.Name, "port": int64(svc.Spec.Ports[0].Port)}))
		_, hasCA, _ := unstructured.NestedString(as.Object, "spec", "caBundle")
		g.Expect(hasCA).To(BeFalse(), "the manager fills in its own serving CA")

		pdb := one(t, defaults, "PodDisruptionBudget")
		g.Expect(stringMap(pdb, "spec", "selector", "matchLabels")).To(Equal(svc.Spec.Selector))
	})

	t.Run("with cert-manager the manager serves the Certificate's Secret and cainjector keeps the APIService's caBundle", func(t *testing.T) {
		g := NewWithT(t)
		svc := service(t, everything, release+"-access")
		host := svc.Name + "." + namespace + ".svc"
		cert := one(t, everything, "Certificate")
		secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
		dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
		g.Expect(dnsNames).To(Equal([]string{host, host + ".cluster.local"}), "the names the aggregation layer verifies")
		issuerRef, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "issuerRef")
		issuer := one(t, everything, "Issuer")
		g.Expect(issuerRef).To(Equal(map[string]string{"name": issuer.GetName(), "kind": "Issuer", "group": "cert-manager.io"}))
		g.Expect(issuer.Object["spec"]).To(Equal(map[string]any{"selfSigned": map[string]any{}}))

		spec := podSpec(t, one(t, everything, "Deployment"))
		c := spec.Containers[0]
		var dir string
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--access-cert-dir="); ok {
				dir = v
			}
		}
		g.Expect(dir).NotTo(BeEmpty(), "%v", c.Args)
		g.Expect(c.Args).To(ContainElement("--access-register-apiservice=false"), "cainjector, not the manager, writes the caBundle")
		g.Expect(c.Args).NotTo(ContainElement("--access-register-apiservice=true"))
		g.Expect(c.VolumeMounts).To(ContainElement(And(HaveField("MountPath", dir), HaveField("ReadOnly", true), HaveField("Name", "access-serving-cert"))))
		g.Expect(spec.Volumes).To(ContainElement(And(HaveField("Name", "access-serving-cert"), HaveField("Secret.SecretName", secretName))))

		as := one(t, everything, "APIService")
		g.Expect(as.GetAnnotations()).To(HaveKeyWithValue("cert-manager.io/inject-ca-from", namespace+"/"+cert.GetName()))
		g.Expect(one(t, defaults, "APIService").GetAnnotations()).To(BeEmpty())
		g.Expect(kinds(defaults)).NotTo(Or(HaveKey("Certificate"), HaveKey("Issuer")), "off by default")
		g.Expect(podSpec(t, one(t, defaults, "Deployment")).Volumes).To(BeEmpty())

		// An existing ClusterIssuer instead of the self-signed Issuer.
		withIssuer := render(t, helm, "--set", "access.certManager.enabled=true",
			"--set", "access.certManager.issuerRef.name=corp-ca", "--set", "access.certManager.issuerRef.kind=ClusterIssuer")
		g.Expect(kinds(withIssuer)).NotTo(HaveKey("Issuer"))
		issuerRef, _, _ = unstructured.NestedStringMap(one(t, withIssuer, "Certificate").Object, "spec", "issuerRef")
		g.Expect(issuerRef).To(Equal(map[string]string{"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}))

		out, err := manifest.Run(helm, "template", release, chart, "--set", "access.certManager.enabled=true", "--set", "access.createAPIService=false")
		g.Expect(err).To(HaveOccurred())
		g.Expect(out).To(ContainSubstring("access.certManager.enabled needs access.createAPIService"))
	})

	t.Run("the node agent: downward API, host paths, KVM unless emulation is allowed", func(t *testing.T) {
		g := NewWithT(t)
		spec := podSpec(t, one(t, defaults, "DaemonSet"))
		g.Expect(spec.HostNetwork).To(BeTrue())
		g.Expect(spec.HostPID).To(BeTrue())
		c := spec.Containers[0]
		g.Expect(c.Image).To(Equal("sandbox-operator/node-agent:0.1.0"))
		g.Expect(c.Env).To(ContainElements(
			corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			corev1.EnvVar{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}}))
		g.Expect(c.Args).To(ContainElements("--lease-namespace="+namespace, "--node-address=$(HOST_IP)",
			"--access-bind-address=[$(HOST_IP)]:10270", "--access-advertise-address=[$(HOST_IP)]:10270",
			"--metrics-bind-address=[$(HOST_IP)]:8090", "--health-probe-bind-address=[$(HOST_IP)]:8091",
			"--state-dir=/var/lib/sandbox-operator", "--accelerator=auto",
			"--cgroup-parent=/run/sandbox-operator/cgroup"))
		g.Expect(c.Args).NotTo(ContainElement("--allow-emulation"), "allowEmulation is off by default")
		g.Expect(*c.SecurityContext.Privileged).To(BeTrue())
		g.Expect(spec.NodeSelector).To(BeEmpty())
		vols := map[string]corev1.HostPathVolumeSource{}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				vols[v.Name] = *v.HostPath
			}
		}
		charDev, dirOrCreate := corev1.HostPathCharDev, corev1.HostPathDirectoryOrCreate
		g.Expect(vols).To(Equal(map[string]corev1.HostPathVolumeSource{
			"kvm":       {Path: "/dev/kvm", Type: &charDev},
			"state":     {Path: "/var/lib/sandbox-operator", Type: &dirOrCreate},
			"vm-cgroup": {Path: "/sys/fs/cgroup/sandbox-vms.slice", Type: &dirOrCreate},
		}))

		spec = podSpec(t, one(t, everything, "DaemonSet"))
		c = spec.Containers[0]
		g.Expect(c.Args).To(ContainElements("--allow-emulation", "--image-dir=/var/lib/sandbox-images",
			"--initrd=/opt/sandbox-operator/initrd.img", "--egress-ca-bundle=/etc/sandbox-operator/egress-ca/ca.crt"))
		g.Expect(c.Image).To(Equal("registry.example.com/sandbox-operator/node-agent:v0.1.0-test"))
		g.Expect(spec.NodeSelector).To(Equal(map[string]string{"sandbox.microvm.dev/kvm": "true"}))
		g.Expect(spec.Tolerations).To(HaveLen(1))
		for _, v := range spec.Volumes {
			if v.Name == "kvm" {
				g.Expect(*v.HostPath.Type).To(BeEmpty(), "with emulation allowed a node without /dev/kvm runs the agent")
			}
		}
		g.Expect(spec.Volumes).To(ContainElement(And(HaveField("Name", "images"), HaveField("HostPath.Path", "/var/lib/sandbox-images"))),
			"an image cache outside the state directory lives on the host too")
		g.Expect(c.VolumeMounts).To(ContainElement(And(HaveField("Name", "images"), HaveField("MountPath", "/var/lib/sandbox-images"))))

		out, err := manifest.Run(helm, "template", release, chart, "--set", "nodeAgent.accelerator=tcg")
		g.Expect(err).To(HaveOccurred(), "tcg without allowEmulation")
		g.Expect(out).To(ContainSubstring("set nodeAgent.allowEmulation=true"))
	})

	cluster := manifest.StartCluster(t, assets, kubectl)
	c := cluster.Client
	ctx := context.Background()

	t.Run("the rendered chart is accepted by the API server: server-side dry-run, then for real, then upgraded with every option", func(t *testing.T) {
		g := NewWithT(t)
		// helm install --create-namespace makes the namespace first.
		g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}})).To(Succeed())
		// The Prometheus operator's and cert-manager's CRDs, as schemaless stand-ins.
		cluster.InstallCRDs(g,
			manifest.StandInCRD("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
			manifest.StandInCRD("cert-manager.io", "v1", "Certificate", "certificates"),
			manifest.StandInCRD("cert-manager.io", "v1", "Issuer", "issuers"))

		for _, rendering := range []struct {
			name    string
			objects []*unstructured.Unstructured
		}{{"defaults", defaults}, {"every option", everything}} {
			file := filepath.Join(t.TempDir(), "chart.yaml")
			g.Expect(os.WriteFile(file, manifest.Encode(t, rendering.objects), 0o600)).To(Succeed())
			apply := []string{"apply", "--server-side", "--field-manager=helm", "-f", file}

			out, err := cluster.Kubectl(append(apply, "--dry-run=server")...)
			g.Expect(err).NotTo(HaveOccurred(), "server-side dry-run of %s:\n%s", rendering.name, out)
			if rendering.name == "defaults" {
				for _, o := range rendering.objects {
					err := c.Get(ctx, client.ObjectKeyFromObject(o), manifest.CloneEmpty(o))
					g.Expect(apierrors.IsNotFound(err) || meta.IsNoMatchError(err)).To(BeTrue(), "the dry run stored %s %s: %v", o.GetKind(), o.GetName(), err)
				}
			}

			out, err = cluster.Kubectl(apply...)
			g.Expect(err).NotTo(HaveOccurred(), "apply of %s:\n%s", rendering.name, out)
			for _, o := range rendering.objects {
				got := manifest.CloneEmpty(o)
				g.Expect(c.Get(ctx, client.ObjectKeyFromObject(o), got)).To(Succeed(), "%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
				g.Expect(got.GetLabels()).To(Equal(o.GetLabels()), "%s %s", o.GetKind(), o.GetName())
			}
		}
	})
}

// render runs helm template on the chart (CRDs included) and decodes it.
func render(t *testing.T, helm string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command(helm, append([]string{"template", release, chart, "--namespace", namespace, "--include-crds"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.String())
	}
	return manifest.Decode(t, bytes.NewReader(out))
}

func kinds(objs []*unstructured.Unstructured) map[string]int {
	m := map[string]int{}
	for _, o := range objs {
		m[o.GetKind()]++
	}
	return m
}

func byKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func one(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	got := byKind(objs, kind)
	if len(got) != 1 {
		t.Fatalf("want one %s, got %d", kind, len(got))
	}
	return got[0]
}

func convert(t *testing.T, from map[string]any, to any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(from, to); err != nil {
		t.Fatal(err)
	}
}

// podSpec is a Deployment's or DaemonSet's Pod template spec.
func podSpec(t *testing.T, o *unstructured.Unstructured) corev1.PodSpec {
	t.Helper()
	m, ok, err := unstructured.NestedMap(o.Object, "spec", "template", "spec")
	if !ok || err != nil {
		t.Fatalf("%s %s has no Pod template: %v", o.GetKind(), o.GetName(), err)
	}
	var spec corev1.PodSpec
	convert(t, m, &spec)
	return spec
}

func service(t *testing.T, objs []*unstructured.Unstructured, name string) corev1.Service {
	t.Helper()
	for _, o := range byKind(objs, "Service") {
		if o.GetName() == name {
			var svc corev1.Service
			convert(t, o.Object, &svc)
			return svc
		}
	}
	t.Fatalf("no Service %s", name)
	return corev1.Service{}
}

func stringMap(o *unstructured.Unstructured, fields ...string) map[string]string {
	m, _, _ := unstructured.NestedStringMap(o.Object, fields...)
	return m
}

// grants lists what each identity may do: one line per (identity, kind of
// role, namespace, rules) bound to it, with ownNamespace written as
// "<own>" so that the chart's release namespace and config/'s
// sandbox-system compare equal. identities maps ServiceAccount names to
// identity names. Sorted.
func grants(t *testing.T, objs []*unstructured.Unstructured, ownNamespace string, identities map[string]string) []string {
	t.Helper()
	roles := map[string][]rbacv1.PolicyRule{}
	for _, o := range objs {
		if o.GetKind() == "ClusterRole" || o.GetKind() == "Role" {
			var r rbacv1.Role
			convert(t, o.Object, &r)
			roles[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()] = r.Rules
		}
	}
	var out []string
	for _, o := range objs {
		if o.GetKind() != "ClusterRoleBinding" && o.GetKind() != "RoleBinding" {
			continue
		}
		var b rbacv1.RoleBinding
		convert(t, o.Object, &b)
		rules, ok := roles[b.RoleRef.Kind+"/"+b.Namespace+"/"+b.RoleRef.Name]
		if b.RoleRef.Kind == "ClusterRole" {
			rules, ok = roles["ClusterRole//"+b.RoleRef.Name]
		}
		if !ok {
			t.Errorf("%s %s/%s binds %s %s, which is not there", o.GetKind(), b.Namespace, b.Name, b.RoleRef.Kind, b.RoleRef.Name)
			continue
		}
		ns := b.Namespace
		if ns == ownNamespace {
			ns = "<own>"
		}
		rj, err := json.Marshal(rules)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range b.Subjects {
			id, known := identities[s.Name]
			if s.Kind != rbacv1.ServiceAccountKind || !known || s.Namespace != ownNamespace {
				t.Errorf("%s %s/%s binds an unexpected subject %+v", o.GetKind(), b.Namespace, b.Name, s)
				continue
			}
			out = append(out, fmt.Sprintf("%s %s ns=%q %s", id, b.RoleRef.Kind, ns, rj))
		}
	}
	sort.Strings(out)
	return out
}
