package v1alpha1_test

// kubectl explain against the real kube-apiserver started by TestMain (see
// validation_test.go): every branch of the Sandbox and SandboxNode schemas
// must be documented, since `kubectl explain` is how users read the API.
// The descriptions come from the Go doc comments of this package, through
// controller-gen into config/crd/bases and the API server's OpenAPI v3.

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

// explainCase is one `kubectl explain <path>` and what its output must hold
// on top of the checks every path gets (see checkExplain).
type explainCase struct {
	path string
	// fields are (some of) the fields listed under FIELDS.
	fields []string
	// contains are substrings of the output.
	contains []string
}

// explainCases name every branch of the spec and status that the API's
// users configure or read. TestKubectlExplain also walks the schemas and
// checks the branches missing here.
var explainCases = []explainCase{
	{path: "sandboxes.spec", fields: []string{
		"image", "rootDisk", "resources", "runtime", "env", "lifecycle", "mounts", "patches", "rlimits",
		"init", "network", "imagePullPolicy", "imagePullSecrets", "registry", "state", "stopPolicy",
		"restartPolicy", "nodeSelector", "tolerations", "accelerator",
	}},
	{path: "sandbox.spec", fields: []string{"image", "resources", "runtime"}},
	{path: "sandbox.spec.rootDisk", fields: []string{"medium", "sizeMiB"}},
	{path: "sandbox.spec.resources", fields: []string{"cpus", "memoryMiB"}, contains: []string{"memoryMiB", "512"}},
	{path: "sandbox.spec.runtime",
		fields:   []string{"workdir", "shell", "scripts", "entrypoint", "cmd", "hostname", "user", "logLevel"},
		contains: []string{"workdir", "shell", "scripts", "entrypoint", "cmd", "hostname", "user", "logLevel"}},
	{path: "sandbox.spec.env", fields: []string{"name", "value", "valueFrom"}},
	{path: "sandbox.spec.env.valueFrom", fields: []string{"secretKeyRef", "configMapKeyRef"}},
	{path: "sandbox.spec.lifecycle", fields: []string{"ephemeral", "maxDurationSeconds", "idleTimeoutSeconds"}},
	{path: "sandbox.spec.mounts", fields: []string{"guestPath", "readOnly", "emptyDir", "persistentVolumeClaim", "configMap", "secret"}},
	{path: "sandbox.spec.mounts.emptyDir", fields: []string{"medium", "sizeMiB"}},
	{path: "sandbox.spec.mounts.persistentVolumeClaim", fields: []string{"claimName"}},
	{path: "sandbox.spec.mounts.configMap", fields: []string{"name", "optional"}},
	{path: "sandbox.spec.mounts.secret", fields: []string{"name", "optional"}},
	{path: "sandbox.spec.patches", fields: []string{"type", "path", "content", "contentFrom", "target", "mode", "replace"}},
	{path: "sandbox.spec.patches.contentFrom", fields: []string{"secretKeyRef", "configMapKeyRef"}},
	{path: "sandbox.spec.rlimits", fields: []string{"resource", "soft", "hard"}},
	{path: "sandbox.spec.init", fields: []string{"cmd", "args", "env"}},
	{path: "sandbox.spec.network", fields: []string{"enabled", "ports", "policy", "dns", "secrets", "trustHostCAs"}},
	{path: "sandbox.spec.network.ports", fields: []string{"name", "guestPort", "hostPort", "protocol", "hostIP"}},
	{path: "sandbox.spec.network.policy", fields: []string{"defaultEgress", "rules"}},
	{path: "sandbox.spec.network.policy.rules", fields: []string{"action", "destination", "protocols", "ports"}},
	{path: "sandbox.spec.network.policy.rules.destination", fields: []string{"cidr", "domain", "domainSuffix", "group"}},
	{path: "sandbox.spec.network.policy.rules.ports", fields: []string{"start", "end"}},
	{path: "sandbox.spec.network.dns", fields: []string{"nameservers", "rebindProtection", "queryTimeoutMillis"}},
	{path: "sandbox.spec.network.secrets", fields: []string{"envVar", "secretKeyRef", "placeholder", "allowedHosts", "injection", "onViolation"}},
	{path: "sandbox.spec.network.secrets.injection", fields: []string{"headers", "basicAuth", "queryParams", "body"}},
	{path: "sandbox.spec.registry", fields: []string{"insecure", "caBundleRef"}},
	{path: "sandbox.spec.registry.caBundleRef", fields: []string{"name", "key"}},
	{path: "sandbox.spec.stopPolicy", fields: []string{"mode", "gracePeriodSeconds"}},
	{path: "sandbox.spec.imagePullSecrets", fields: []string{"name"}},
	{path: "sandbox.spec.tolerations", fields: []string{"key", "operator", "value", "effect", "tolerationSeconds"}},
	{path: "sandbox.status", fields: []string{
		"phase", "conditions", "observedGeneration", "nodeName", "run", "restartCount", "startedAt", "stoppedAt",
		"exitCode", "terminationReason", "stopRequest", "imageDigest", "vm", "timings", "ports",
	}},
	{path: "sandbox.status.vm", fields: []string{"run", "nodeName", "state", "pid", "accelerator", "bootedAt", "exitedAt", "exitCode", "exitReason", "message"}},
	{path: "sandbox.status.timings", fields: []string{"scheduledMillis", "imagePulledMillis", "rootfsReadyMillis", "vmmStartedMillis", "guestReadyMillis"}},
	{path: "sandbox.status.stopRequest", fields: []string{"reason", "requestedAt"}},
	{path: "sandboxnodes.spec", fields: []string{"unschedulable", "taints"}},
	{path: "sandboxnodes.status", fields: []string{"capacity", "allocatable", "accelerator", "versions", "cachedImages", "conditions"}},
}

var (
	// fieldLine is a field of the FIELDS section of `kubectl explain`:
	// two spaces, the name, a tab, the type in angle brackets.
	fieldLine = regexp.MustCompile(`^  (\S+)\t<[^>]+>( -required-)?$`)
	// enumLine follows a field line when the field has an enum.
	enumLine = regexp.MustCompile(`^  enum: `)
	// descriptionLine is a line of a field's description.
	descriptionLine = regexp.MustCompile(`^    \S`)
	// recursiveLine is a field of `kubectl explain --recursive`, indented
	// two spaces per level.
	recursiveLine = regexp.MustCompile(`^((?:  )+)(\S+)\t<[^>]+>( -required-)?$`)
)

func TestKubectlExplain(t *testing.T) {
	requireEnv(t)
	g := NewWithT(t)

	// A cache directory of our own keeps kubectl's discovery cache out of
	// $HOME. kubectl runs one at a time: KubeCtl.Run is not safe for
	// concurrent use.
	cacheDir := t.TempDir()
	user, err := testEnv.AddUser(envtest.User{Name: "explain-reader", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatalf("adding a kubectl user: %v", err)
	}
	kubectl, err := user.Kubectl()
	if err != nil {
		t.Fatalf("configuring kubectl: %v", err)
	}
	explain := func(args ...string) (string, error) {
		stdout, stderr, err := kubectl.Run(append([]string{"--cache-dir=" + cacheDir, "explain"}, args...)...)
		out, _ := io.ReadAll(stdout)
		if err != nil {
			errOut, _ := io.ReadAll(stderr)
			return string(out), fmt.Errorf("kubectl explain %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(errOut))
		}
		return string(out), nil
	}

	// The API server publishes a new CRD's OpenAPI schema a moment after
	// the CRD is established (which is all envtest waits for); until then
	// explain fails with "couldn't find resource".
	for _, resource := range []string{"sandboxes", "sandboxnodes"} {
		g.Eventually(func() error {
			_, err := explain(resource + ".spec")
			return err
		}).WithTimeout(time.Minute).WithPolling(500*time.Millisecond).Should(Succeed(), "OpenAPI schema of %s", resource)
	}

	// The full tree of each resource, from `kubectl explain --recursive`.
	branches := map[string][]string{}
	for _, resource := range []string{"sandboxes", "sandboxnodes"} {
		out, err := explain(resource, "--recursive")
		g.Expect(err).NotTo(HaveOccurred())
		branches[resource] = explainBranches(out)
		g.Expect(branches[resource]).To(ContainElements("spec", "status"), "branches of %s:\n%s", resource, out)
	}

	listed := map[string]bool{}
	for _, tc := range explainCases {
		listed[normalizeExplainPath(tc.path)] = true
		t.Run(tc.path, func(t *testing.T) {
			g := NewWithT(t)
			resource, b, _ := strings.Cut(normalizeExplainPath(tc.path), ".")
			g.Expect(branches[resource]).To(ContainElement(b), "%s is not a branch of %s", b, resource)
			out, err := explain(tc.path)
			g.Expect(err).NotTo(HaveOccurred())
			fields := checkExplain(g, out)
			g.Expect(fields).To(ContainElements(tc.fields), "fields of %s:\n%s", tc.path, out)
			for _, s := range tc.contains {
				g.Expect(out).To(ContainSubstring(s), "kubectl explain %s", tc.path)
			}
		})
	}

	// Every other branch (a field with fields of its own: Kubernetes types
	// such as secretKeyRef and conditions, repeated structs such as
	// spec.init.env) must be documented too. metadata belongs to
	// Kubernetes and is left out.
	for _, resource := range []string{"sandboxes", "sandboxnodes"} {
		for _, b := range branches[resource] {
			if b != "spec" && b != "status" && !strings.HasPrefix(b, "spec.") && !strings.HasPrefix(b, "status.") {
				continue
			}
			path := resource + "." + b
			if listed[path] {
				continue
			}
			t.Run(path, func(t *testing.T) {
				g := NewWithT(t)
				out, err := explain(path)
				g.Expect(err).NotTo(HaveOccurred())
				checkExplain(g, out)
			})
		}
	}
}

// normalizeExplainPath spells the resource of an explain path in the plural:
// "sandbox.spec" and "sandboxes.spec" are the same branch.
func normalizeExplainPath(p string) string {
	resource, rest, _ := strings.Cut(p, ".")
	switch resource {
	case "sandbox":
		resource = "sandboxes"
	case "sandboxnode":
		resource = "sandboxnodes"
	}
	return resource + "." + rest
}

// checkExplain checks the output of `kubectl explain <field>`: the field
// itself has a description, it has a FIELDS section, and each field in it
// has a description. kubectl prints "<empty>" for a missing description of
// the explained field and "<no description>" for one of a listed field.
// It returns the names of the listed fields.
func checkExplain(g Gomega, out string) []string {
	g.ExpectWithOffset(1, out).NotTo(ContainSubstring("<empty>"), "undocumented field:\n%s", out)
	g.ExpectWithOffset(1, out).NotTo(ContainSubstring("<no description>"), "undocumented field:\n%s", out)

	head, fieldsSection, found := strings.Cut(out, "\nFIELDS:\n")
	g.ExpectWithOffset(1, found).To(BeTrue(), "no FIELDS: section:\n%s", out)
	_, description, found := strings.Cut(head, "\nDESCRIPTION:\n")
	g.ExpectWithOffset(1, found).To(BeTrue(), "no DESCRIPTION: section:\n%s", out)
	g.ExpectWithOffset(1, strings.TrimSpace(description)).NotTo(BeEmpty(), "empty description:\n%s", out)

	var names []string
	lines := strings.Split(fieldsSection, "\n")
	for i := 0; i < len(lines); i++ {
		m := fieldLine.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		name := m[1]
		names = append(names, name)
		// The description follows the field line, after its enum line if
		// there is one.
		j := i + 1
		if j < len(lines) && enumLine.MatchString(lines[j]) {
			j++
		}
		description := ""
		if j < len(lines) && descriptionLine.MatchString(lines[j]) {
			description = strings.TrimSpace(lines[j])
		}
		g.ExpectWithOffset(1, description).NotTo(BeElementOf("", "<empty>", "<no description>"),
			"field %q has no description:\n%s", name, out)
	}
	g.ExpectWithOffset(1, names).NotTo(BeEmpty(), "no field parsed from FIELDS:\n%s", out)
	return names
}

// explainBranches returns the dotted paths of the fields that have fields
// of their own (objects, lists and maps of objects) in the output of
// `kubectl explain <resource> --recursive`.
func explainBranches(out string) []string {
	_, fieldsSection, _ := strings.Cut(out, "\nFIELDS:\n")
	type entry struct {
		level int
		name  string
	}
	var entries []entry
	for _, l := range strings.Split(fieldsSection, "\n") {
		if m := recursiveLine.FindStringSubmatch(l); m != nil {
			entries = append(entries, entry{level: len(m[1]) / 2, name: m[2]})
		}
	}
	var branches, path []string
	for i, e := range entries {
		if e.level-1 > len(path) {
			// Malformed indentation; should not happen.
			continue
		}
		path = append(path[:e.level-1], e.name)
		if i+1 < len(entries) && entries[i+1].level > e.level {
			branches = append(branches, strings.Join(path, "."))
		}
	}
	return branches
}
