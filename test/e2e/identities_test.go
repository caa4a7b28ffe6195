//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// The manager and the node agents run under the Helm chart's own
// identities: its ServiceAccounts, its RBAC (ClusterRoles, Roles,
// bindings) and its node restriction admission policy, rendered with
// `helm template` and applied with kubectl; they authenticate with tokens
// from the TokenRequest API (each agent's bound to a Pod object on its node,
// which puts the node's name into the token, as a DaemonSet Pod's token
// has it). Nothing of config/rbac is applied: what the chart grants is all
// they get.

// chartRelease and the ServiceAccount names: the chart's defaults for a
// release "sandbox" in leaseNamespace, with the ServiceAccounts named as
// config/rbac names them (the chart's serviceAccount.name values).
const chartRelease = "sandbox"

// chartKinds are the objects of the rendered chart the e2e suite applies:
// identities and their permissions only (no workloads: the suite runs the
// binaries as processes; no CRDs: envtest installed them).
var chartKinds = map[string]bool{
	"ServiceAccount": true, "ClusterRole": true, "ClusterRoleBinding": true, "Role": true, "RoleBinding": true,
	"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true,
}

// applyChartIdentities renders charts/sandbox-operator with bin/helm and
// applies its ServiceAccounts, RBAC and admission policy.
func applyChartIdentities() {
	GinkgoHelper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	Expect(err).NotTo(HaveOccurred())
	helm := filepath.Join(root, "bin", "helm")
	Expect(errIfMissing(helm, "run `make helm`")).To(Succeed())
	out, err := exec.Command(helm, "template", chartRelease, filepath.Join(root, "charts", "sandbox-operator"),
		"--namespace", leaseNamespace, "--skip-crds",
		"--set", "manager.serviceAccount.name="+managerServiceAccount,
		"--set", "nodeAgent.serviceAccount.name="+nodeAgentServiceAccount).Output()
	Expect(err).NotTo(HaveOccurred(), "helm template: %s", exitStderr(err))
	var keep []string
	for _, doc := range strings.Split(string(out), "\n---") {
		for _, line := range strings.Split(doc, "\n") {
			if k, ok := strings.CutPrefix(line, "kind: "); ok && chartKinds[strings.TrimSpace(k)] {
				keep = append(keep, doc)
				break
			}
		}
	}
	Expect(len(keep)).To(BeNumerically(">=", 11), "the chart's identities, RBAC and policy")
	mustKubectl("apply", "--server-side", "-f", writeManifest("chart-identities.yaml", strings.Join(keep, "\n---\n")))
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// tokenKubeconfig writes a kubeconfig for ServiceAccount sa of
// leaseNamespace with a token from the TokenRequest API, bound to pod when
// it is set (the agents'), and returns its path.
func tokenKubeconfig(name, sa string, pod *corev1.Pod) string {
	GinkgoHelper()
	cs, err := kubernetes.NewForConfig(testEnv.Config)
	Expect(err).NotTo(HaveOccurred())
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(2 * 3600))}}
	if pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := cs.CoreV1().ServiceAccounts(leaseNamespace).CreateToken(context.Background(), sa, req, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	cfg := testEnv.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["e2e"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: sa}
	kc.CurrentContext = "e2e"
	path := filepath.Join(workDir, name+".kubeconfig")
	b, err := clientcmd.Write(*kc)
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(path, b, 0o600)).To(Succeed())
	return path
}

// agentPod creates the Pod object a DaemonSet would run the node agent of
// node in (no kubelet runs it: it is what the agent's token is bound to).
func agentPod(node string) *corev1.Pod {
	GinkgoHelper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sandbox-node-agent-" + node, Namespace: leaseNamespace},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: nodeAgentServiceAccount,
			Containers: []corev1.Container{{Name: "node-agent", Image: "sandbox-operator/node-agent"}}},
	}
	Expect(k8sClient.Create(context.Background(), pod)).To(Succeed())
	return pod
}
