#!/usr/bin/env bash
# Regenerates deepcopy, CRDs, RBAC and the admission policy (in config/ and their copies in the Helm
# chart) and the client-go code, then fails if the result differs from what is
# committed (or leaves untracked files).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s generate manifests >/dev/null
paths=(api config/crd config/rbac pkg/client charts/sandbox-operator/crds charts/sandbox-operator/files/rbac charts/sandbox-operator/files/admission)
if ! git diff --exit-code --stat -- "${paths[@]}" || [ -n "$(git ls-files --others --exclude-standard -- "${paths[@]}")" ]; then
  echo "Generated files are out of date: run 'make generate manifests' and commit the result." >&2
  git status --short -- "${paths[@]}" >&2
  exit 1
fi
echo "generated files are up to date"
