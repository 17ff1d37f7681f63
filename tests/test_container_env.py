"""The image's own environment, without a Docker engine: its Python and its pins, under the real Triton.

`make test` builds the venv (`make container-venv`, scripts/container_env.py) and runs the whole suite with
COLQWEN2_SERVING_VENV pointing at it: every Triton a test starts runs its Python-backend stubs on it, and the
gateway and the CLI the tests start are its console scripts (parity, hostile input, batching, gateway, CLI,
health, overload, security, supervisor). Here: the venv holds exactly the image's pins, the stubs really run
on it, the image's entry-point command (render, supervisor, Triton) serves colpali-engine's vectors on it,
checked through the image's CLI, and the exporter stage's pins resolve for the image's Python.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export.sample_images import keepa_chart
from export.validate import per_token_cosine
from model_repository.processes import Process, free_ports
from model_repository.server import make_backend_dir, triton_home
from scripts.container_env import exporter_dry_run, read_base_image, requirement_lines, stored_dry_run
from tests.conftest import SERVING_VENV, _console_script, serving_python
from tests.images import encode
from tests.test_triton_server import reference_image

pytestmark = [
    pytest.mark.container_env,
    pytest.mark.skipif(not SERVING_VENV, reason="needs COLQWEN2_SERVING_VENV: run `make test-container-env`"),
]

ROOT = Path(__file__).resolve().parent.parent


def image_python() -> str:
    return read_base_image()["PYTHON_VERSION"]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file and the files it includes."""
    found = {}
    for line in requirement_lines(path):
        name, version = line.split("==")
        found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return found


def venv_run(code: str) -> str:
    out = subprocess.run([serving_python(), "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_the_venv_is_the_images_python_with_exactly_its_pins():
    version = venv_run("import sys; print('%d.%d' % sys.version_info[:2])")
    assert version == image_python()
    listing = "import importlib.metadata as m; print('\\n'.join(f'{d.name}=={d.version}' for d in m.distributions()))"
    freeze = venv_run(listing)
    installed = {n.lower().replace("_", "-"): v for n, v in (line.split("==") for line in freeze.splitlines())}
    wanted = pins(ROOT / "docker" / "requirements-serving.txt")
    assert {name: installed.get(name) for name in wanted} == wanted
    assert "onnxruntime" not in installed and "torch" not in installed  # the GPU wheel only, and no torch
    providers = venv_run("import onnxruntime; print(onnxruntime.get_available_providers())")
    assert "CUDAExecutionProvider" in providers and "TensorrtExecutionProvider" in providers  # the GPU build


def test_the_exporter_stages_pins_resolve_for_the_images_python():
    """docker/Dockerfile's exporter stage: the serving pins, requirements/export.txt and colpali-engine (no deps)
    resolve for the image's Python (pip's own resolver, --dry-run). `make container-venv` resolves them beside
    `make setup` and keeps the answer in the venv with the digest of the pins; a different digest resolves again."""
    report = stored_dry_run(Path(SERVING_VENV)) or exporter_dry_run(Path(SERVING_VENV))
    assert report["version"].startswith(image_python() + ".")
    export_pins = pins(ROOT / "requirements" / "export.txt") | pins(ROOT / "requirements" / "colpali.txt")
    resolved = {name: version.split("+")[0] for name, version in report["resolved"].items()}  # 2.14.1+cu130
    assert {name: resolved.get(name) for name in export_pins} == export_pins


def test_the_stubs_run_on_the_images_python_and_packages(triton_server):
    venv = str(Path(SERVING_VENV).absolute())
    stubs = triton_server.stubs()
    assert any(name.startswith("colqwen2_encoder_") for name in stubs) and any("preprocess" in n for n in stubs)
    for name, pid in stubs.items():
        files = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
        assert any(Path(f).name.startswith(f"libpython{image_python()}") for f in files), name
        assert any(f.startswith(venv) and "numpy" in f for f in files), name
        if name.startswith("colqwen2_encoder_"):
            assert any(f.startswith(venv) and "onnxruntime/capi" in f for f in files), name


def test_the_entrypoint_command_serves_colpalis_vectors_on_the_images_python(tiny_artifacts, tiny_reference, tmp_path):
    """docker/entrypoint.sh's `serve` (render, supervisor, Triton) run by the venv's Python, as the image runs
    it with its own tritonserver; pytriton's binary and a backend folder with this Python's stub stand in."""
    backends = make_backend_dir(tmp_path / "backends", image_python())
    http, grpc, metrics, supervisor = free_ports(4)
    command = [
        serving_python(), "-m", "model_repository.serve", "--artifacts", str(tiny_artifacts),
        "--repository", str(tmp_path / "repository"), "--device", "cpu", "--precision", "fp16",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--supervisor-port", str(supervisor), "--triton-binary", str(triton_home() / "bin" / "tritonserver"),
        "--backend-directory", str(backends), "--exit-timeout", "5",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    chart = keepa_chart(7, 1000, 400)
    (tmp_path / "chart.png").write_bytes(encode(chart, "PNG"))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # the image's PYTHONPATH
    process = Process(command, log, env=env, cwd=ROOT, name="serve").start()
    try:
        url = f"http://127.0.0.1:{http}"
        process.wait_ready(url=f"{url}/v2/health/ready", timeout=180)
        cli = _console_script("colqwen2")
        health = subprocess.run([cli, "--url", url, "health"], capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        embed = subprocess.run(
            [cli, "--url", f"grpc://127.0.0.1:{grpc}", "embed", str(tmp_path / "chart.png"), "--vectors"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert embed.returncode == 0, embed.stderr
        got = np.array(json.loads(embed.stdout.splitlines()[0])["vectors"], np.float32)
        ref = reference_image(tiny_reference, chart)
        assert got.shape == ref.shape
        cos = per_token_cosine(got, ref)
        assert cos.min() >= 0.999 and np.abs(got - ref).max() <= 1e-4, (cos.min(), np.abs(got - ref).max())
    finally:
        code = process.stop(60)
    assert code == 0, process.tail()
