#!/usr/bin/env bash
# Regenerates the typed client-go clientset, listers, informers and apply
# configurations under pkg/client from api/v1alpha1. Called by `make generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
M=github.com/microvm-dev/sandbox-operator
API=$M/api/v1alpha1
HDR=hack/boilerplate.go.txt
BIN=${BIN:-bin}
rm -rf pkg/client
"$BIN/applyconfiguration-gen" --go-header-file "$HDR" \
  --output-dir pkg/client/applyconfiguration --output-pkg $M/pkg/client/applyconfiguration "$API"
"$BIN/client-gen" --go-header-file "$HDR" --clientset-name versioned --input-base "" --input "$API" \
  --output-dir pkg/client/clientset --output-pkg $M/pkg/client/clientset \
  --apply-configuration-package $M/pkg/client/applyconfiguration
"$BIN/lister-gen" --go-header-file "$HDR" \
  --output-dir pkg/client/listers --output-pkg $M/pkg/client/listers "$API"
"$BIN/informer-gen" --go-header-file "$HDR" \
  --output-dir pkg/client/informers --output-pkg $M/pkg/client/informers \
  --versioned-clientset-package $M/pkg/client/clientset/versioned \
  --listers-package $M/pkg/client/listers "$API"
