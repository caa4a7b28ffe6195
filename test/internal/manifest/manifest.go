// Package manifest holds what the install tests (test/helm, test/kustomize)
// share: finding the pinned tools, running them, and reading and writing
// Kubernetes manifests as unstructured objects.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Binary returns the absolute path of a tool: $env when env names a set
// variable, else def. It fails the test with hint when the file is missing.
func Binary(t testing.TB, env, def, hint string) string {
	t.Helper()
	p := def
	if env != "" && os.Getenv(env) != "" {
		p = os.Getenv(env)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("no %s: %s", abs, hint)
	}
	return abs
}

// Run runs a command and returns its combined output.
func Run(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Output runs a command and decodes its standard output; it fails the test
// with the command's standard error when the command fails.
func Output(t testing.TB, name string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return Decode(t, bytes.NewReader(out))
}

// DecodeFile decodes the manifests in the file at path.
func DecodeFile(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	return Decode(t, f)
}

// Decode reads a multi-document YAML stream, skipping empty documents.
func Decode(t testing.TB, r io.Reader) []*unstructured.Unstructured {
	t.Helper()
	d := yaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		var raw runtime.RawExtension
		if err := d.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("decoding YAML: %v", err)
		}
		if len(raw.Raw) == 0 || string(raw.Raw) == "null" {
			continue
		}
		// Unstructured's own JSON decoding keeps integers int64, whichever
		// tool wrote the YAML.
		o := &unstructured.Unstructured{}
		if err := o.UnmarshalJSON(raw.Raw); err != nil {
			t.Fatalf("decoding %s: %v", raw.Raw, err)
		}
		objs = append(objs, o)
	}
}

// Encode writes objects as one JSON document per line (kubectl reads a
// stream of them).
func Encode(t testing.TB, objs []*unstructured.Unstructured) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, o := range objs {
		j, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// CloneEmpty is an empty object of o's kind, for a Get.
func CloneEmpty(o *unstructured.Unstructured) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(o.GroupVersionKind())
	return u
}

// StandInCRD stands in for another project's CRD (no schema: any spec is
// stored), so that objects of that kind (the Prometheus operator's
// ServiceMonitors, cert-manager's Certificates and Issuers) can be applied.
func StandInCRD(group, version, kind, plural string) *unstructured.Unstructured {
	crd := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": plural + "." + group},
		"spec": map[string]any{
			"group": group, "scope": "Namespaced",
			"names": map[string]any{"kind": kind, "listKind": kind + "List", "plural": plural, "singular": strings.ToLower(kind)},
			"versions": []any{map[string]any{"name": version, "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	return crd
}
