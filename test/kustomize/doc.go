// Package kustomize proves that the kustomize tree under config/ installs
// what the Helm chart installs: `kubectl kustomize config/default` (kubectl
// from bin/k8s, built by `make control-plane`) equals `helm template` of
// charts/sandbox-operator (bin/helm, `make helm`) with its defaults for a
// release named "sandbox" in sandbox-system, object for object, less the
// labels only Helm writes; config/prometheus equals the ServiceMonitors the
// chart adds with metrics.serviceMonitor.enabled. Both trees are then applied
// to a kube-apiserver (envtest) with server-side dry-run and for real.
package kustomize
