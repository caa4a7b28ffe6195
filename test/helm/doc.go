// Package helm holds the tests of the Helm chart charts/sandbox-operator:
// helm lint and helm template with bin/helm (built by `make helm`, pinned in
// hack/tools/helm), the rendered manifests applied with server-side dry-run
// and then for real to a kube-apiserver (envtest), and the chart's RBAC
// compared with config/rbac's.
package helm
