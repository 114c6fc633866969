#!/usr/bin/env bash
# Fetches (once) and caches the Prometheus Operator's ServiceMonitor and PodMonitor CRDs, so
# that the chart test can check the monitors the chart renders against their real schemas.
# They come from the Go module proxy (the prometheus-operator module's source zip holds them
# under example/prometheus-operator-crd/).
#
# Output (stdout): the directory of the two CRD files. A second run finds them and does nothing.
set -euo pipefail

VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.88.0}"
CACHE="${SLUICE_E2E_CACHE:-$HOME/.cache/sluice-e2e}/prometheus-operator-$VERSION"
FILES=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml)

if [ -f "$CACHE/.complete" ]; then
  echo "$CACHE"
  exit 0
fi
command -v unzip >/dev/null || { echo "install-prometheus-crds: unzip is missing" >&2; exit 1; }
PROXY="${GOPROXY:-https://proxy.golang.org}"
PROXY="${PROXY%%,*}"
rm -rf "$CACHE" && mkdir -p "$CACHE"
zip="$CACHE/module.zip"
echo "[prometheus-crds] fetching prometheus-operator $VERSION from $PROXY (once)" >&2
curl -fsSL --retry 3 -o "$zip" "$PROXY/github.com/prometheus-operator/prometheus-operator/@v/$VERSION.zip"
for f in "${FILES[@]}"; do
  unzip -p "$zip" "github.com/prometheus-operator/prometheus-operator@$VERSION/example/prometheus-operator-crd/$f" > "$CACHE/$f"
  grep -q "kind: CustomResourceDefinition" "$CACHE/$f" || { echo "install-prometheus-crds: $f is not a CRD" >&2; exit 1; }
done
rm -f "$zip"
touch "$CACHE/.complete"
echo "$CACHE"
