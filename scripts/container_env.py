"""The image's Python environment, built on this host: the first step of `make test-container-env`.

The image (docker/Dockerfile) runs the serving code on NVIDIA's Triton image, whose Python is
`PYTHON_VERSION` in docker/base-image.env, with exactly docker/requirements-serving.txt installed and
the client installed without dependencies. No Docker engine runs here, but the same Python and pins
can: `build` makes a venv of that Python with those pins (the tests then run Triton's Python-backend
stubs, the gateway and the CLI on it); `exporter-dry-run` asks pip whether the exporter stage's pins
(the serving pins plus requirements/export.txt) resolve for that Python.

    python scripts/container_env.py build --venv .venv-container
    python scripts/container_env.py exporter-dry-run --venv .venv-container

A host without that Python, or pins that do not resolve, get one message naming what is missing and
exit code 2. Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = ROOT / "docker" / "base-image.env"
SERVING_PINS = ROOT / "docker" / "requirements-serving.txt"
EXPORT_PINS = ROOT / "requirements" / "export.txt"
COLPALI_PINS = ROOT / "requirements" / "colpali.txt"
STAMP = ".pins.sha256"
PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


class EnvError(Exception):
    """A problem of the host or the pins, reported as one message without a traceback."""


def read_base_image(path: Path = BASE_IMAGE) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise EnvError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip()
    for key in ("TRITON_RELEASE", "PYTHON_VERSION"):
        if key not in values:
            raise EnvError(f"{path} does not set {key}")
    return values


def python_version(executable: str) -> str | None:
    """`3.12.1` for a working interpreter; None for a missing file or a shim that cannot run it."""
    try:
        out = subprocess.run([executable, "-c", PROBE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def candidates(version: str) -> list[str]:
    """Where an interpreter of `version` (major.minor) may live on a developer's or CI's host."""
    found = [shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    found += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    uv = shutil.which("uv")
    if uv:
        out = subprocess.run([uv, "python", "find", version], capture_output=True, text=True, timeout=60)
        found.append(out.stdout.strip() if out.returncode == 0 else "")
    return [c for c in dict.fromkeys(found) if c]


def find_python(version: str, explicit: str = "") -> tuple[str, str]:
    """(executable, full version) of a Python `version`; EnvError naming where it looked otherwise."""
    tried = [explicit] if explicit else candidates(version)
    for executable in tried:
        full = python_version(executable)
        if full is not None and full.rsplit(".", 1)[0] == version:
            return executable, full
        if explicit:
            what = "does not run" if full is None else f"is Python {full}"
            raise EnvError(f"CONTAINER_PYTHON={explicit} {what}; the image's Python is {version}")
    raise EnvError(
        f"no Python {version} on this host (the image's Python, docker/base-image.env); looked for "
        f"python{version} on PATH, under pyenv and in /usr/bin. Install it (`pyenv install {version}`, "
        f"`uv python install {version}` or your distribution's python{version}) or point CONTAINER_PYTHON at it."
    )


def requirement_files(requirements: Path) -> list[Path]:
    """A requirements file and every file it includes with -r, recursively, each once."""
    found: list[Path] = []
    pending = [requirements.resolve()]
    while pending:
        path = pending.pop(0)
        if path in found:
            continue
        found.append(path)
        for match in re.finditer(r"^\s*-r\s+(\S+)", path.read_text(), re.M):
            pending.append((path.parent / match.group(1)).resolve())
    return found


def requirement_lines(requirements: Path) -> list[str]:
    """The requirement lines (comments and -r lines dropped) of a file and of the files it includes."""
    lines = []
    for path in requirement_files(requirements):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r "):
                lines.append(line)
    return lines


def pins_digest(requirements: Path) -> str:
    """A digest of a requirements file and every file it includes (what a rebuild depends on)."""
    digest = hashlib.sha256()
    for path in requirement_files(requirements):
        digest.update(path.name.encode() + b"\0" + path.read_text().encode())
    return digest.hexdigest()


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def pip_errors(result: subprocess.CompletedProcess, limit: int = 400) -> str:
    """pip's own ERROR lines, each cut to `limit` characters (its version lists run to kilobytes)."""
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("ERROR")]
    lines = lines or (result.stderr + result.stdout).strip().splitlines()[-5:]
    return "\n".join("  " + (line if len(line) <= limit else line[:limit] + " ...") for line in lines)


def ensure_venv(venv: Path, python: str, full_version: str) -> None:
    existing = python_version(str(venv / "bin" / "python")) if (venv / "bin" / "python").exists() else None
    if existing == full_version:
        return
    shutil.rmtree(venv, ignore_errors=True)
    result = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvError(f"{python} -m venv {venv} failed:\n{result.stderr.strip()[-2000:]}")


def build(venv: Path, requirements: Path, version: str, explicit_python: str = "") -> dict:
    python, full = find_python(version, explicit_python)
    ensure_venv(venv, python, full)
    stamp = venv / STAMP
    digest = pins_digest(requirements)
    if not stamp.exists() or stamp.read_text() != digest:
        stamp.unlink(missing_ok=True)
        result = pip(venv, "install", "--quiet", "--no-compile", "-r", str(requirements))  # bytecode on first import
        if result.returncode != 0:
            raise EnvError(f"{shown(requirements)} does not resolve for Python {full}:\n{pip_errors(result)}")
        stamp.write_text(digest)
    # The client as the image installs it: not editable, no dependencies (they are the pins above).
    result = pip(venv, "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT / "client"))
    if result.returncode != 0:
        raise EnvError(f"installing client/ into {venv} failed:\n{pip_errors(result)}")
    result = pip(venv, "check")
    if result.returncode != 0:
        raise EnvError(f"the packages in {venv} are inconsistent:\n{result.stdout.strip()}")
    freeze = pip(venv, "freeze", "--exclude-editable").stdout.splitlines()
    return {"python": python, "version": full, "venv": str(venv), "packages": freeze}


DRY_RUN_REPORT = "exporter-dry-run.json"  # in the venv: the last resolution, with the digest of the pins it read


def exporter_pins_digest() -> str:
    return pins_digest(SERVING_PINS) + pins_digest(EXPORT_PINS) + pins_digest(COLPALI_PINS)


def stored_dry_run(venv: Path) -> dict | None:
    """The report `exporter-dry-run` left in `venv`, if it was made from today's pins; else None."""
    try:
        report = json.loads((venv / DRY_RUN_REPORT).read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("pins") == exporter_pins_digest() else None


def exporter_dry_run(venv: Path) -> dict:
    """pip's resolution of the exporter stage (serving pins + export pins) for the venv's Python; also kept in
    the venv (DRY_RUN_REPORT) with the digest of the pins, so a test can read it instead of resolving again."""
    full = python_version(str(venv / "bin" / "python"))
    if full is None:
        raise EnvError(f"{venv} is not a working venv: run `scripts/container_env.py build` first")
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
    result = pip(venv, *args, "-r", str(SERVING_PINS), "-r", str(EXPORT_PINS))
    if result.returncode != 0:
        raise EnvError(f"the exporter stage's pins do not resolve for Python {full}:\n{pip_errors(result)}")
    report = json.loads(result.stdout)
    resolved = {normalized(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    # colpali-engine goes in with --no-deps (requirements/export.txt says why): only its own wheel must exist.
    result = pip(venv, *args, "--no-deps", "-r", str(COLPALI_PINS))
    if result.returncode != 0:
        raise EnvError(f"{shown(COLPALI_PINS)} does not resolve for Python {full}:\n{pip_errors(result)}")
    for item in json.loads(result.stdout)["install"]:
        resolved[normalized(item["metadata"]["name"])] = item["metadata"]["version"]
    report = {"version": full, "resolved": resolved, "pins": exporter_pins_digest()}
    (venv / DRY_RUN_REPORT).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "exporter-dry-run"])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-container", help="(default: %(default)s)")
    parser.add_argument(
        "--requirements", type=Path, default=SERVING_PINS, help="the image's pins (default: %(default)s)"
    )
    parser.add_argument(
        "--python-version", default="", help="major.minor (default: PYTHON_VERSION in docker/base-image.env)"
    )
    args = parser.parse_args(argv)
    try:
        base = read_base_image()
        version = args.python_version or base["PYTHON_VERSION"]
        image = f"nvcr.io/nvidia/tritonserver:{base['TRITON_RELEASE']}-py3"
        if args.command == "build":
            env = build(
                args.venv.absolute(), args.requirements.absolute(), version, os.environ.get("CONTAINER_PYTHON", "")
            )
            print(f"container env: Python {env['version']} ({env['python']}), the Python of {image}")
            print(f"container env: {env['venv']} holds {args.requirements.name} and the client, exactly:")
            for line in env["packages"]:
                print(f"  {line}")
        else:  # resolved again only when the pins changed since the venv's last answer
            dry = stored_dry_run(args.venv.absolute()) or exporter_dry_run(args.venv.absolute())
            key = ("torch", "transformers", "colpali-engine", "onnx", "onnxruntime-gpu", "numpy")
            shown = ", ".join(f"{name} {dry['resolved'][name]}" for name in key if name in dry["resolved"])
            print(
                f"exporter stage: {len(dry['resolved'])} packages resolve for Python {dry['version']} "
                f"(pip --dry-run): {shown}"
            )
    except EnvError as exc:
        print(f"container env: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
