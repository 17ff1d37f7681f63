"""The Helm chart, checked with the real helm binary and Kubernetes' own schemas (no cluster needed)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "colqwen2"
SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))
QDRANT_EXAMPLE = ROOT / "helm" / "examples" / "qdrant-cluster"
# Every values file the chart is rendered with: the ci/ scenarios and the worked examples.
VALUES = [*SCENARIOS, QDRANT_EXAMPLE / "colqwen2-values.yaml"]
# A new collection's settings: gateway.qdrant.<value> -> the gateway's flag.
COLLECTION_FLAGS = {
    "shards": "--shards",
    "replicationFactor": "--replication-factor",
    "writeConsistencyFactor": "--write-consistency-factor",
    "onDisk": "--on-disk",
    "quantization": "--quantization",
}
HELM = str(Path(sys.executable).parent / "helm")
KUBERNETES = "1.35.0"
# CRDs have no schema in Kubernetes' own set: checked here against the fields the operator needs.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["port"]}},
            },
        }
    },
}


def render(*values: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    args = [HELM, "template", "colqwen2", str(CHART), "--namespace", "ai-stack"]
    for v in values:
        args += ["-f", str(v)]
    out = subprocess.run([*args, *extra], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def values_id(values: Path | None) -> str:
    return "defaults" if values is None else values.stem if values.parent.name == "ci" else values.parent.name


def gateway_args(docs: list[dict]) -> list[str]:
    containers = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")["args"]


def template_error(*settings: str) -> str:
    """helm template's stderr for values it must refuse."""
    args = [HELM, "template", "x", str(CHART)]
    for setting in settings:
        args += ["--set", setting]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0, f"{settings} rendered"
    return result.stderr


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module")
def default() -> list[dict]:
    return render()


def test_helm_lint_strict():
    for values in [None, *VALUES]:
        args = [HELM, "lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, *VALUES], ids=values_id)
def test_every_manifest_is_valid_kubernetes(values):
    import jsonschema

    docs = render(values) if values else render()
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_defaults_reproduce_the_original_deployment(default):
    deployment = by_kind(default, "Deployment", "colqwen2")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["app"] == "colqwen2"
    assert deployment["spec"]["selector"]["matchLabels"]["app"] == "colqwen2"
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"gpu": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    triton = next(c for c in spec["containers"] if c["name"] == "triton")
    assert triton["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1},
    }


def test_the_original_urls_and_the_triton_ports(default):
    api = by_kind(default, "Service", "colqwen2")
    assert api["spec"]["ports"] == [{"name": "api", "port": 8001, "targetPort": "gateway", "protocol": "TCP"}]
    triton_service = by_kind(default, "Service", "colqwen2-triton")
    assert {(p["name"], p["port"]) for p in triton_service["spec"]["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }
    containers = by_kind(default, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "supervisor": 8003, "gateway": 8080}
    gateway = next(c for c in containers if c["name"] == "gateway")
    assert "--triton-url=grpc://127.0.0.1:8001" in gateway["args"]
    test_pod = by_kind(default, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "http://colqwen2:8001/health" in test_pod["spec"]["containers"][0]["args"]


def test_probes_are_sized_for_loading_and_liveness_infers(default):
    containers = by_kind(default, "Deployment")["spec"]["template"]["spec"]["containers"]
    triton = next(c for c in containers if c["name"] == "triton")
    startup = triton["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # the supervisor's verdict (stubs, process, canaries on their own lane): busy is live, dead is not
    assert triton["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "supervisor"}
    assert {"name": "supervisor", "containerPort": 8003, "protocol": "TCP"} in triton["ports"]
    gateway = next(c for c in containers if c["name"] == "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"


def test_secure_defaults_and_shared_memory(default):
    spec = by_kind(default, "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "colqwen2-artifacts"
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/dev/shm", "/models", "/tmp"} <= mounts


def test_opt_in_features_stay_off_by_default(default):
    kinds = {d["kind"] for d in default}
    assert kinds == {
        "ServiceAccount",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "Pod",
        "Secret",
        "NetworkPolicy",
    }


def test_locked_down_by_default(default):
    secrets = {d["metadata"]["name"]: d for d in default if d["kind"] == "Secret"}
    assert set(secrets) == {"colqwen2-triton-admin", "colqwen2-gateway-token"}
    for secret in secrets.values():
        (value,) = secret["data"].values()
        assert len(base64.b64decode(value)) == 40
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = by_kind(default, "Deployment")["spec"]["template"]["spec"]
    triton, gateway = spec["containers"]
    assert {"name": "ADMIN_KEY_FILE", "value": "/etc/colqwen2/admin/admin-key"} in triton["env"]
    assert "--token-file=/etc/colqwen2/gateway/token" in gateway["args"]
    assert "--max-concurrency=64" in gateway["args"] and "--request-timeout=30" in gateway["args"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["admin-key"]["secret"]["secretName"] == "colqwen2-triton-admin"
    assert volumes["gateway-token"]["secret"]["secretName"] == "colqwen2-gateway-token"
    rules = by_kind(default, "NetworkPolicy")["spec"]["ingress"]
    by_port = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in rules}
    assert by_port[("http", "grpc")] == [{"podSelector": {}}]  # Triton: in-namespace clients only
    assert by_port[("gateway",)] == [{"podSelector": {}}]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert by_port[("metrics", "supervisor")] == [{"podSelector": {}}, monitoring]


def test_existing_secrets_and_an_open_gateway_when_asked():
    docs = render(
        extra=("--set", "triton.adminKey.existingSecret=ops-admin", "--set", "gateway.auth.existingSecret=ops-token")
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    volumes = {v["name"]: v for v in by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["admin-key"]["secret"]["secretName"] == "ops-admin"
    assert volumes["gateway-token"]["secret"]["secretName"] == "ops-token"
    docs = render(extra=("--set", "gateway.auth.enabled=false"))
    gateway = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][1]
    assert not any(a.startswith("--token-file") for a in gateway["args"])
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == ["colqwen2-triton-admin"]


def test_gateway_points_at_a_qdrant_service():
    gateway = by_kind(render(), "Deployment")["spec"]["template"]["spec"]["containers"][1]
    assert not any(a.startswith("--qdrant") for a in gateway["args"]) and "env" not in gateway
    docs = render(
        extra=("--set", "gateway.qdrant.url=http://qdrant.search.svc:6333", "--set", "gateway.qdrant.apiKeySecret=qd")
    )
    gateway = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][1]
    assert "--qdrant-url=http://qdrant.search.svc:6333" in gateway["args"]
    assert "--collection=visual_embeddings" in gateway["args"]
    assert gateway["env"] == [
        {"name": "QDRANT_API_KEY", "valueFrom": {"secretKeyRef": {"name": "qd", "key": "api-key"}}}
    ]


def test_gateway_on_the_qdrant_cluster_example():
    """helm/examples/qdrant-cluster/: the gateway on the cluster's Service, the key, the new collection's settings."""
    docs = render(QDRANT_EXAMPLE / "colqwen2-values.yaml")
    args = gateway_args(docs)
    qdrant_args = args[args.index("--qdrant-url=http://qdrant.search.svc:6333") :]
    assert qdrant_args == [
        "--qdrant-url=http://qdrant.search.svc:6333",
        "--collection=visual_embeddings",
        "--shards=6",
        "--replication-factor=2",
        "--write-consistency-factor=1",
        "--on-disk",
        "--quantization=scalar",
    ]
    gateway = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][1]
    key = {"name": "qdrant-api-key", "key": "api-key"}
    assert gateway["env"] == [{"name": "QDRANT_API_KEY", "valueFrom": {"secretKeyRef": key}}]
    # The NetworkPolicy stays on and limits ingress only: the gateway's egress to Qdrant in `search` is open.
    assert by_kind(docs, "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]
    # The qdrant chart's values: a three-node cluster whose key is the Secret the gateway reads.
    qdrant = yaml.safe_load((QDRANT_EXAMPLE / "qdrant-values.yaml").read_text())
    assert qdrant["replicaCount"] == 3 and qdrant["config"]["cluster"]["enabled"] is True
    assert qdrant["apiKey"]["valueFrom"]["secretKeyRef"] == key
    assert "see README capacity model" in (QDRANT_EXAMPLE / "qdrant-values.yaml").read_text()
    assert "## Capacity model" in (QDRANT_EXAMPLE / "README.md").read_text()
    (policy,) = yaml.safe_load_all((QDRANT_EXAMPLE / "qdrant-networkpolicy.yaml").read_text())
    kubernetes_validate.validate(policy, KUBERNETES, strict=True)


def test_image_urls_are_fetched_only_from_the_hosts_an_operator_lists(default):
    """The default render fetches no URL (no allow-list reaches the gateway, which then refuses every `url`)."""
    gateway = by_kind(default, "Deployment")["spec"]["template"]["spec"]["containers"][1]
    assert not any(a.startswith("--url-") for a in gateway["args"])
    docs = render(extra=("--set", "gateway.imageUrls.allowHosts={m.media-amazon.com,graph.keepa.com}",
                         "--set", "gateway.imageUrls.allowNetworks={10.20.0.0/16}"))  # fmt: skip
    args = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][1]["args"]
    assert [a for a in args if a.startswith("--url-")] == [
        "--url-allow-host=m.media-amazon.com", "--url-allow-host=graph.keepa.com",
        "--url-allow-network=10.20.0.0/16", "--url-timeout=10",
    ]  # fmt: skip
    for bad in ("allowHosts={http://keepa.com/}", "allowNetworks={internal}", "timeoutSeconds=0"):
        error = template_error(f"gateway.imageUrls.{bad}")
        assert "schema" in error and "imageUrls" in error, error


def test_collection_settings_only_with_a_qdrant_url():
    settings = (
        "gateway.qdrant.shards=4",
        "gateway.qdrant.replicationFactor=2",
        "gateway.qdrant.writeConsistencyFactor=2",
        "gateway.qdrant.onDisk=true",
        "gateway.qdrant.quantization=binary",
    )
    extra = tuple(a for s in settings for a in ("--set", s))
    args = gateway_args(render(extra=extra))  # no url: no index, so none of its settings
    assert not [a for a in args if a.startswith(("--qdrant", "--collection", *COLLECTION_FLAGS.values()))]
    args = gateway_args(render(extra=(*extra, "--set", "gateway.qdrant.url=https://qdrant.example.com:6333")))
    assert [a for a in args if a.startswith(tuple(COLLECTION_FLAGS.values()))] == [
        "--shards=4",
        "--replication-factor=2",
        "--write-consistency-factor=2",
        "--on-disk",
        "--quantization=binary",
    ]
    # A url alone: the gateway's defaults (Qdrant's shards and replication, in RAM, its quantization).
    args = gateway_args(render(extra=("--set", "gateway.qdrant.url=http://qdrant:6333")))
    assert "--qdrant-url=http://qdrant:6333" in args
    assert not [a for a in args if a.startswith(tuple(COLLECTION_FLAGS.values()))]
    url_and_none = ("--set", "gateway.qdrant.url=http://qdrant:6333", "--set", "gateway.qdrant.quantization=none")
    assert "--quantization=none" in gateway_args(render(extra=url_and_none))


BAD_COLLECTION_SETTINGS = {  # value -> what helm's schema error must say
    "quantization=foo": r"quantization.*(none|one of)",
    "shards=0": r"shards.*(minimum|greater than or equal)",
    "replicationFactor=0": r"replicationFactor.*(minimum|greater than or equal)",
    "writeConsistencyFactor=-1": r"writeConsistencyFactor.*(minimum|greater than or equal)",
    "shards=six": r"shards.*integer",
    "onDisk=yes": r"onDisk.*boolean",
    "url=qdrant.search.svc:6333": r"url.*(pattern|match)",
}


@pytest.mark.parametrize(("setting", "says"), BAD_COLLECTION_SETTINGS.items(), ids=list(BAD_COLLECTION_SETTINGS))
def test_schema_refuses_bad_collection_settings(setting, says):
    error = template_error("gateway.qdrant.url=http://qdrant:6333", f"gateway.qdrant.{setting}")
    assert "schema" in error and re.search(says, error), error


def test_write_consistency_above_replication_is_refused():
    error = template_error(
        "gateway.qdrant.url=http://qdrant:6333",
        "gateway.qdrant.replicationFactor=2",
        "gateway.qdrant.writeConsistencyFactor=3",
    )
    assert "writeConsistencyFactor (3) must not exceed gateway.qdrant.replicationFactor (2)" in error


def test_everything_scenario():
    docs = render(CHART / "ci" / "everything-values.yaml")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "50000"
    assert "replicas" not in by_kind(docs, "Deployment")["spec"]  # the HPA owns it
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert by_kind(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]["app"] == "colqwen2"
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    init = spec["initContainers"][0]
    assert "python3 -m export" in init["args"][0] and "manifest.json" in init["args"][0]
    assert {"name": "CHECKPOINT", "value": "vidore/colqwen2-v1.0"} in init["env"]


def test_cpu_scenario_drops_the_gpu():
    docs = render(CHART / "ci" / "cpu-existing-claim-values.yaml")
    spec = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert [c["name"] for c in spec["containers"]] == ["triton"]
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert {"name": "DEVICE", "value": "cpu"} in spec["containers"][0]["env"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "colqwen2-exports"
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def test_schema_refuses_bad_values():
    result = subprocess.run(
        [HELM, "template", "x", str(CHART), "--set", "gateway.precision=fp64"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "precision" in result.stderr
    for bad in ("triton.maxVisualTokens=2", "triton.fixedImageSize=450", "triton.precision=fp8"):
        result = subprocess.run([HELM, "template", "x", str(CHART), "--set", bad], capture_output=True, text=True)
        assert result.returncode != 0 and bad.split(".")[1].split("=")[0] in result.stderr, bad


def test_precision_and_visual_token_cap_reach_the_render():
    docs = render(extra=("--set", "triton.precision=int8", "--set", "triton.maxVisualTokens=256"))
    env = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "PRECISION", "value": "int8"} in env and {"name": "MAX_VISUAL_TOKENS", "value": "256"} in env


def test_kustomize_users_get_plain_manifests(tmp_path):
    """The documented path: `helm template` into a kustomization, then `kubectl kustomize`."""
    manifest = subprocess.run(
        [HELM, "template", "colqwen2", str(CHART), "--namespace", "ai-stack"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "colqwen2.yaml").write_text(manifest)
    (tmp_path / "kustomization.yaml").write_text("namespace: ai-stack\nresources:\n  - colqwen2.yaml\n")
    kubectl = str(Path(sys.executable).parent / "kubectl")
    built = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert {d["metadata"].get("namespace") for d in docs} == {"ai-stack"}
