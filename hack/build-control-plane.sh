#!/usr/bin/env bash
# Builds a real kube-apiserver, etcd and kubectl from the Go module proxy (no
# prebuilt downloads) into bin/k8s, for envtest and `make dev`.
#
# Idempotent and cached: the binaries are built once per version into
# $SANDBOX_CACHE (default ~/.cache/sandbox-operator), which survives fresh
# clones on the same machine (CI clones anew for every run), then copied into
# bin/k8s. A cold build takes 12-15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.0
STAMP="kube-apiserver ${K8S_VERSION} etcd ${ETCD_VERSION} go $(go env GOVERSION) ldflags-v1"
CACHE="${SANDBOX_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/sandbox-operator}/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
DEST=bin/k8s
BINS=(kube-apiserver etcd kubectl)

have_all() { for b in "${BINS[@]}"; do [ -x "$1/$b" ] || return 1; done; [ "$(cat "$1/.stamp" 2>/dev/null)" = "$STAMP" ]; }

if have_all "$DEST"; then exit 0; fi
if ! have_all "$CACHE"; then
  echo "Building kube-apiserver ${K8S_VERSION}, etcd ${ETCD_VERSION} and kubectl from source (12-15 min cold) into ${CACHE}" >&2
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "${CACHE}.XXXX")
  # Stamp the version the way Kubernetes' own build does, so /version and
  # kubectl report v1.37.2 rather than v0.0.0-master.
  V=k8s.io/component-base/version
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-X $V.gitVersion=${K8S_VERSION} -X $V.gitMajor=1 -X $V.gitMinor=${minor} -X $V.gitTreeState=clean -X $V.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION} -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"
  (cd hack/tools/k8s && go build -ldflags "$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3)
  # go names a /v3 module's binary after the element before the version suffix.
  for n in server v3; do [ -e "$tmp/$n" ] && mv "$tmp/$n" "$tmp/etcd"; done
  echo "$STAMP" >"$tmp/.stamp"
  rm -rf "$CACHE" && mv "$tmp" "$CACHE"
fi
mkdir -p "$DEST"
for b in "${BINS[@]}"; do cp -f "$CACHE/$b" "$DEST/$b"; done
cp -f "$CACHE/.stamp" "$DEST/.stamp"
echo "control plane binaries ready in $DEST ($STAMP)" >&2
