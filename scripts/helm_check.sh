#!/usr/bin/env bash
# `make helm-lint`: helm lint --strict, then every render (defaults and helm/colqwen2/ci/*.yaml)
# validated against Kubernetes' schemas, then the chart's and the image's pytest checks.
set -euo pipefail
venv=${1:-.venv}
chart=helm/colqwen2
k8s_version=1.35.0
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$venv/bin/helm" lint --strict "$chart"
for values in "$chart"/ci/*.yaml; do
  "$venv/bin/helm" lint --strict "$chart" -f "$values"
done
"$venv/bin/helm" template colqwen2 "$chart" --namespace ai-stack > "$out/defaults.yaml"
for values in "$chart"/ci/*.yaml; do
  "$venv/bin/helm" template colqwen2 "$chart" --namespace ai-stack -f "$values" > "$out/$(basename "$values")"
done
# ServiceMonitor is a CRD without a Kubernetes schema: tests/test_helm.py checks its fields.
"$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out"/*.yaml
echo "helm-lint: every render is valid Kubernetes $k8s_version"
"$venv/bin/python" -m pytest -q tests/test_helm.py tests/test_docker.py
