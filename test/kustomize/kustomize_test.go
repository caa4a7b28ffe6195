package kustomize

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/microvm-dev/sandbox-operator/test/internal/manifest"
)

const (
	root  = "../.."
	chart = root + "/charts/sandbox-operator"
	// release and namespace are what config/default is written for: its
	// names and its app.kubernetes.io/instance label are those of a release
	// "sandbox" (fullnameOverride sandbox, so no "sandbox-sandbox-operator-"
	// prefix) in sandbox-system.
	release   = "sandbox"
	namespace = "sandbox-system"
)

var (
	defaultDir    = filepath.Join(root, "config", "default")
	prometheusDir = filepath.Join(root, "config", "prometheus")
	// certManagerDir is config/default with the config/certmanager
	// Component.
	certManagerDir = filepath.Join(root, "config", "overlays", "cert-manager")

	// helmOnlyLabels are the chart's labels that name Helm, the chart's
	// version or the app's version: they have no meaning in a kustomize
	// install (and the version ones would change with every release), so
	// config/ does not carry them. Selectors never hold them.
	helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}
)

// TestKustomizeEqualsChart renders config/default and config/prometheus with
// kubectl's kustomize and the chart with helm, and compares them object for
// object as unstructured maps (so YAML comments, key order and quoting do
// not matter); then applies both trees to a real kube-apiserver.
func TestKustomizeEqualsChart(t *testing.T) {
	helm := manifest.Binary(t, "HELM", filepath.Join(root, "bin", "helm"), "run `make helm` (make test builds it)")
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s")
	}
	kubectl := manifest.Binary(t, "", filepath.Join(assets, "kubectl"), "run `make control-plane` or set KUBEBUILDER_ASSETS")

	chartDefaults := withoutHelmLabels(byKey(t, render(t, helm)))
	chartMonitors := withoutHelmLabels(byKey(t, render(t, helm, "--set", "metrics.serviceMonitor.enabled=true")))
	def := byKey(t, build(t, kubectl, defaultDir))
	prom := byKey(t, build(t, kubectl, prometheusDir))
	chartCertManager := withoutHelmLabels(byKey(t, render(t, helm, "--set", "access.certManager.enabled=true")))
	certManager := byKey(t, build(t, kubectl, certManagerDir))
	nsKey := key(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": namespace}}})

	t.Run("config/default holds the chart's objects and, for want of helm's --create-namespace, its Namespace", func(t *testing.T) {
		g := NewWithT(t)
		missing, extra := diffKeys(chartDefaults, def)
		g.Expect(missing).To(BeEmpty(), "objects of the chart that config/default lacks")
		g.Expect(extra).To(Equal([]string{nsKey}), "objects of config/default that the chart lacks")
	})

	t.Run("each object of config/default equals the chart's, less the Helm-only labels", func(t *testing.T) {
		for _, k := range sortedKeys(chartDefaults) {
			if got, ok := def[k]; ok {
				if d := cmp.Diff(chartDefaults[k].Object, got.Object); d != "" {
					t.Errorf("%s in config/default differs from the chart's (-chart +kustomize):\n%s", k, d)
				}
			}
		}
	})

	t.Run("config/prometheus holds the ServiceMonitors the chart adds with metrics.serviceMonitor.enabled, and equals them", func(t *testing.T) {
		g := NewWithT(t)
		extra := map[string]*unstructured.Unstructured{}
		for k, o := range chartMonitors {
			if _, ok := chartDefaults[k]; !ok {
				extra[k] = o
			}
		}
		g.Expect(kinds(extra)).To(Equal(map[string]int{"ServiceMonitor": 2}))
		missing, unexpected := diffKeys(extra, prom)
		g.Expect(missing).To(BeEmpty(), "objects the chart adds that config/prometheus lacks")
		g.Expect(unexpected).To(BeEmpty(), "objects of config/prometheus that the chart does not add")
		for _, k := range sortedKeys(extra) {
			if got, ok := prom[k]; ok {
				if d := cmp.Diff(extra[k].Object, got.Object); d != "" {
					t.Errorf("%s in config/prometheus differs from the chart's (-chart +kustomize):\n%s", k, d)
				}
			}
		}
	})

	t.Run("config/overlays/cert-manager (config/default and the config/certmanager Component) equals the chart with access.certManager.enabled", func(t *testing.T) {
		g := NewWithT(t)
		missing, extra := diffKeys(chartCertManager, certManager)
		g.Expect(missing).To(BeEmpty(), "objects of the chart that the overlay lacks")
		g.Expect(extra).To(Equal([]string{nsKey}), "objects of the overlay that the chart lacks")
		added := map[string]*unstructured.Unstructured{}
		for k, o := range chartCertManager {
			if _, ok := chartDefaults[k]; !ok {
				added[k] = o
			}
		}
		g.Expect(kinds(added)).To(Equal(map[string]int{"Certificate": 1, "Issuer": 1}))
		for _, k := range sortedKeys(chartCertManager) {
			if got, ok := certManager[k]; ok {
				if d := cmp.Diff(chartCertManager[k].Object, got.Object); d != "" {
					t.Errorf("%s in config/overlays/cert-manager differs from the chart's (-chart +kustomize):\n%s", k, d)
				}
			}
		}
	})

	t.Run("config/default names both images in an images entry, so that `kustomize edit set image` retags them", func(t *testing.T) {
		g := NewWithT(t)
		data, err := os.ReadFile(filepath.Join(defaultDir, "kustomization.yaml"))
		g.Expect(err).NotTo(HaveOccurred())
		var k struct {
			Namespace  string `json:"namespace"`
			NamePrefix string `json:"namePrefix"`
			Images     []struct {
				Name string `json:"name"`
			} `json:"images"`
		}
		g.Expect(sigsyaml.Unmarshal(data, &k)).To(Succeed())
		var names []string
		for _, i := range k.Images {
			names = append(names, i.Name)
		}
		g.Expect(names).To(ConsistOf("sandbox-operator/manager", "sandbox-operator/node-agent"))
		// A namespace transformer would move the manager's Role in
		// kube-system; each file names its namespace instead.
		g.Expect(k.Namespace).To(BeEmpty())
		g.Expect(k.NamePrefix).To(BeEmpty())
	})

	cluster := manifest.StartCluster(t, assets, kubectl)
	c := cluster.Client
	ctx := context.Background()

	t.Run("kubectl apply --server-side -k config/default is accepted by the API server: dry run, then for real", func(t *testing.T) {
		g := NewWithT(t)
		// A dry run stores nothing, so the Namespace it would create does
		// not exist for the namespaced objects after it: apply that one
		// first, as the real apply does (kustomize puts Namespaces first).
		out, err := cluster.Kubectl("apply", "--server-side", "-f", filepath.Join(defaultDir, "namespace.yaml"))
		g.Expect(err).NotTo(HaveOccurred(), out)

		out, err = cluster.Kubectl("apply", "--server-side", "--dry-run=server", "-k", defaultDir)
		g.Expect(err).NotTo(HaveOccurred(), "server-side dry-run of config/default:\n%s", out)
		for k, o := range def {
			if k == nsKey {
				continue
			}
			err := c.Get(ctx, client.ObjectKeyFromObject(o), manifest.CloneEmpty(o))
			g.Expect(apierrors.IsNotFound(err) || meta.IsNoMatchError(err)).To(BeTrue(), "the dry run stored %s: %v", k, err)
		}

		out, err = cluster.Kubectl("apply", "--server-side", "-k", defaultDir)
		g.Expect(err).NotTo(HaveOccurred(), "apply of config/default:\n%s", out)
		for k, o := range def {
			got := manifest.CloneEmpty(o)
			g.Expect(c.Get(ctx, client.ObjectKeyFromObject(o), got)).To(Succeed(), k)
			// The API server adds its own labels (a Namespace's
			// kubernetes.io/metadata.name); ours are all kept.
			for l, v := range o.GetLabels() {
				g.Expect(got.GetLabels()).To(HaveKeyWithValue(l, v), k)
			}
		}
	})

	t.Run("config/prometheus is accepted once the Prometheus operator's CRD is installed: dry run, then for real", func(t *testing.T) {
		g := NewWithT(t)
		// The Prometheus operator's CRD, as a schemaless stand-in; the
		// ServiceMonitors can be applied once it is served.
		cluster.InstallCRDs(g, manifest.StandInCRD("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"))

		out, err := cluster.Kubectl("apply", "--server-side", "--dry-run=server", "-k", prometheusDir)
		g.Expect(err).NotTo(HaveOccurred(), "server-side dry-run of config/prometheus:\n%s", out)
		out, err = cluster.Kubectl("apply", "--server-side", "-k", prometheusDir)
		g.Expect(err).NotTo(HaveOccurred(), "apply of config/prometheus:\n%s", out)
		for k, o := range prom {
			g.Expect(c.Get(ctx, client.ObjectKeyFromObject(o), manifest.CloneEmpty(o))).To(Succeed(), k)
		}
	})

	t.Run("config/overlays/cert-manager is accepted once cert-manager's CRDs are installed: dry run, then for real", func(t *testing.T) {
		g := NewWithT(t)
		// cert-manager's CRDs, as schemaless stand-ins.
		cluster.InstallCRDs(g,
			manifest.StandInCRD("cert-manager.io", "v1", "Certificate", "certificates"),
			manifest.StandInCRD("cert-manager.io", "v1", "Issuer", "issuers"))
		out, err := cluster.Kubectl("apply", "--server-side", "--dry-run=server", "-k", certManagerDir)
		g.Expect(err).NotTo(HaveOccurred(), "server-side dry-run of config/overlays/cert-manager:\n%s", out)
		out, err = cluster.Kubectl("apply", "--server-side", "-k", certManagerDir)
		g.Expect(err).NotTo(HaveOccurred(), "apply of config/overlays/cert-manager:\n%s", out)
		for k, o := range certManager {
			got := manifest.CloneEmpty(o)
			g.Expect(c.Get(ctx, client.ObjectKeyFromObject(o), got)).To(Succeed(), k)
			if o.GetKind() == "APIService" {
				g.Expect(got.GetAnnotations()).To(HaveKeyWithValue("cert-manager.io/inject-ca-from", namespace+"/sandbox-access-serving"))
			}
		}
	})
}

// render runs helm template on the chart (CRDs included) as the release
// config/default is written for.
func render(t *testing.T, helm string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	return manifest.Output(t, helm, append([]string{"template", release, chart, "--namespace", namespace, "--include-crds",
		"--set", "fullnameOverride=" + release}, args...)...)
}

// build runs kubectl's built-in kustomize on dir.
func build(t *testing.T, kubectl, dir string) []*unstructured.Unstructured {
	t.Helper()
	return manifest.Output(t, kubectl, "kustomize", dir)
}

// key names an object: "apiVersion kind namespace/name" (no namespace for a
// cluster-scoped one).
func key(o *unstructured.Unstructured) string {
	return fmt.Sprintf("%s %s %s/%s", o.GetAPIVersion(), o.GetKind(), o.GetNamespace(), o.GetName())
}

// byKey indexes objects by key, failing on a duplicate.
func byKey(t *testing.T, objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	t.Helper()
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		k := key(o)
		if _, dup := m[k]; dup {
			t.Fatalf("%s twice", k)
		}
		m[k] = o
	}
	return m
}

func sortedKeys(m map[string]*unstructured.Unstructured) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// diffKeys lists the keys of want that got lacks, and those of got that want
// lacks, sorted.
func diffKeys(want, got map[string]*unstructured.Unstructured) (missing, extra []string) {
	for _, k := range sortedKeys(want) {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		}
	}
	for _, k := range sortedKeys(got) {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	return missing, extra
}

func kinds(m map[string]*unstructured.Unstructured) map[string]int {
	n := map[string]int{}
	for _, o := range m {
		n[o.GetKind()]++
	}
	return n
}

// withoutHelmLabels removes helmOnlyLabels from each object's labels and,
// for a workload, its Pod template's labels; an emptied labels map goes too.
// Selectors are left alone: they must be equal as they are.
func withoutHelmLabels(objs map[string]*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	for _, o := range objs {
		for _, path := range [][]string{{"metadata", "labels"}, {"spec", "template", "metadata", "labels"}} {
			labels, ok, _ := unstructured.NestedMap(o.Object, path...)
			if !ok {
				continue
			}
			for _, l := range helmOnlyLabels {
				delete(labels, l)
			}
			if len(labels) == 0 {
				unstructured.RemoveNestedField(o.Object, path...)
			} else {
				_ = unstructured.SetNestedMap(o.Object, labels, path...)
			}
		}
	}
	return objs
}
