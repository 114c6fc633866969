#!/usr/bin/env bash
# Builds (once) and caches the Kubernetes control plane used by the e2e tests, from the Go
# module proxy: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd, helm from helm.sh/helm.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod points its staging modules
# (k8s.io/api, k8s.io/client-go, ...) at ./staging with replace directives. A wrapper module
# requires it and replaces every staging module with its published v0.X.Y twin.
#
# Output: $SLUICE_E2E_CACHE/<k8s version>/bin/{etcd,kube-apiserver,kube-controller-manager,
# kube-scheduler,kubectl,helm}. A second run finds them and does nothing.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${SLUICE_E2E_CACHE:-$HOME/.cache/sluice-e2e}/$K8S_VERSION"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { printf '[control-plane %ss] %s\n' "$SECONDS" "$*" >&2; }
have() { [ -x "$BIN/$1" ]; }

command -v go >/dev/null || { echo "build-control-plane: go is missing (install Go 1.24+)" >&2; exit 1; }
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0

build_kubernetes() {
  local src="$CACHE/src/kubernetes" minor_patch="${K8S_VERSION#v1.}"
  rm -rf "$src" && mkdir -p "$src" && cd "$src"
  go mod init sluice.dev/e2e/kubernetes >/dev/null 2>&1
  log "reading k8s.io/kubernetes@$K8S_VERSION go.mod"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  # Every k8s.io module it requires at v0.0.0 is a staging module: use the published one.
  local staging
  staging=$(awk '$1 ~ /^k8s.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u)
  for m in $staging; do
    go mod edit -replace="$m=$m@v0.$minor_patch"
  done
  go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
  log "resolving modules ($(echo "$staging" | wc -w) staging replacements)"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION" >/dev/null 2>&1 || \
    go get "k8s.io/kubernetes@$K8S_VERSION"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (slow: ~10-20 min cold on 2 cores)"
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor_patch%%.*}" \
    -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local src="$CACHE/src/etcd"
  rm -rf "$src" && mkdir -p "$src" && cd "$src"
  go mod init sluice.dev/e2e/etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
  log "building etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

if ! (have kube-apiserver && have kube-controller-manager && have kube-scheduler && have kubectl); then
  build_kubernetes
fi
if ! have etcd; then
  build_etcd
fi
if ! have helm; then
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
log "ready in $BIN"
echo "$BIN"
