"""What can be checked of the image without a Docker engine: lint, pins, files, entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from scripts.container_env import read_base_image, requirement_lines

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent


def test_hadolint_passes():
    result = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = [ROOT / "docker" / "entrypoint.sh", *sorted((ROOT / "scripts").glob("*.sh"))]
    result = subprocess.run([str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_and_artifacts_are_not_baked_in():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TRITON_RELEASE=\d\d\.\d\d$", text, re.M)
    assert "nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3" in text
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+)", text, re.M)
    assert copied and all((ROOT / src.rstrip("/")).exists() for src in copied), copied
    assert not any(src.startswith(("artifacts", "checkpoints")) for src in copied)
    assert re.search(r"^USER 1000:0$", text, re.M)  # uid 1000, group root (Ubuntu 24.04 may name 1000 `ubuntu`)


def test_serving_requirements_are_pinned_and_torch_free():
    lines = requirement_lines(ROOT / "docker" / "requirements-serving.txt")
    assert all("==" in line for line in lines), lines
    names = {line.split("==")[0].split("[")[0] for line in lines}
    assert {"numpy", "onnxruntime-gpu", "pillow", "tokenizers", "tritonclient", "fastapi", "qdrant-client"} <= names
    assert "torch" not in names and "onnxruntime" not in names  # the two ORT wheels must not coexist
    assert any(line.startswith("numpy==1.") for line in lines)  # the Python backend needs numpy < 2


def test_one_pin_per_package_across_the_image_and_the_dev_venv():
    """The image and .venv share requirements/serving.txt; only the ONNX Runtime build differs."""
    image = dict(line.split("==") for line in requirement_lines(ROOT / "docker" / "requirements-serving.txt"))
    dev = dict(line.split("==") for line in requirement_lines(ROOT / "requirements" / "dev.txt"))
    shared = set(image) & set(dev)
    assert set(image) - shared == {"onnxruntime-gpu"} and "onnxruntime" in dev
    assert {name: image[name] for name in shared} == {name: dev[name] for name in shared}
    for path in (ROOT / "requirements").glob("*.txt"):  # each package pinned in one file only
        names = [line.split("==")[0] for line in requirement_lines(path) if "==" in line]
        assert len(names) == len(set(names)), path


def test_the_base_image_facts_match_the_dockerfile():
    env = read_base_image()
    assert re.search(rf"^ARG TRITON_RELEASE={re.escape(env['TRITON_RELEASE'])}$", DOCKERFILE.read_text(), re.M)
    assert re.fullmatch(r"3\.\d+", env["PYTHON_VERSION"])
    assert f"Python {env['PYTHON_VERSION']}" in DOCKERFILE.read_text()


def container_env(*args: str, **env: str) -> subprocess.CompletedProcess:
    script = ROOT / "scripts" / "container_env.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )


def test_container_env_names_a_missing_python():
    result = container_env("build", "--python-version", "3.99", "--venv", "/nonexistent/venv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no Python 3.99 on this host" in result.stderr and "CONTAINER_PYTHON" in result.stderr
    result = container_env("build", "--venv", "/nonexistent/venv", CONTAINER_PYTHON="/usr/bin/false")
    assert result.returncode == 2 and "CONTAINER_PYTHON=/usr/bin/false does not run" in result.stderr


def test_container_env_names_pins_that_do_not_resolve(tmp_path):
    """A pin with no wheel for the Python asked for: pip's reason, one message, no traceback."""
    bad = tmp_path / "requirements.txt"
    bad.write_text("numpy==1.26.4\nonnxruntime-gpu==1.20.1\n")  # 1.20.1 has no wheel for any Python here
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = container_env("build", "--python-version", here, "--requirements", str(bad), "--venv", str(tmp_path / "v"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{bad} does not resolve for Python {here}" in result.stderr
    assert "onnxruntime-gpu==1.20.1" in result.stderr and len(result.stderr) < 3000


def test_entrypoint_refuses_a_missing_export(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint.sh"), "serve"],
        env={"ARTIFACTS": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no export at" in result.stderr


def test_entrypoint_renders_the_repository_it_serves(tiny_artifacts, tmp_path):
    """`serve` renders with the image's command line and starts the image's tritonserver under the supervisor;
    tritonserver is stubbed to show its arguments (and exits, which the supervisor reports)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "tritonserver").write_text('#!/bin/sh\necho "tritonserver $*"\n')
    (fake_bin / "tritonserver").chmod(0o755)
    (fake_bin / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (fake_bin / "python3").chmod(0o755)
    env = {
        "ARTIFACTS": str(tiny_artifacts),
        "REPOSITORY": str(tmp_path / "repo"),
        "DEVICE": "gpu",
        "MAX_VISUAL_TOKENS": "256",
        "RENDER_ARGS": "--trt-cache-dir /models/trt-cache",
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint.sh")], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1 and "tritonserver exited with code 0 before it was ready" in result.stderr
    args = result.stdout.split()
    assert f"--model-repository={tmp_path / 'repo'}" in args and "--disable-auto-complete-config" in args
    assert "--http-address=0.0.0.0" in args and "--exit-timeout-secs=30" in args
    assert not any(a.startswith("--backend-directory") for a in args)  # the image's own backends
    # no key file mounted: the admin APIs are locked with a random key, never left open
    (http_rule,) = [a for a in args if a.startswith("--http-restricted-api=")]
    assert http_rule.startswith("--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key=")
    assert len(http_rule.split("admin-key=")[1]) >= 32
    assert any(a.startswith("--grpc-restricted-protocol=model-repository,") for a in args)
    assert "admin APIs locked with a random key" in result.stderr
    config = (tmp_path / "repo" / "colqwen2_encoder_fp16" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config and "/models/trt-cache" in config
    served = json.loads((tmp_path / "repo" / "render.json").read_text())
    assert served["ensembles"] == {"colqwen2": "fp16", "colqwen2_query": "fp16"} and served["max_visual_tokens"] == 256
