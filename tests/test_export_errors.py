"""Bad input to the exporter: one clear line, a non-zero exit, nothing that looks complete."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from export import spec
from export.errors import ValidationError
from export.pipeline import ExportOptions, run_export


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=300)


def _assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_checkpoint(tmp_path):
    result = _cli("--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    _assert_one_line_error(result, "checkpoint not found", "nope")
    assert not (tmp_path / "out").exists()


def test_not_a_colqwen2_checkpoint(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = _cli("--checkpoint", str(bert), "--out", str(tmp_path / "out"))
    _assert_one_line_error(result, "not a colpali-engine ColQwen2 checkpoint", "'bert'")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line_error(_cli("--checkpoint", str(empty), "--out", str(tmp_path / "out")), "no config.json")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _cli("--checkpoint", str(tiny_checkpoint), "--out", str(blocker / "out"))
    _assert_one_line_error(result, "output folder", "cannot be created")


def test_unknown_variant(tmp_path, tiny_checkpoint):
    result = _cli("--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--variants", "fp8")
    _assert_one_line_error(result, "unknown variants ['fp8']")


def test_failing_threshold_fails_the_export(tmp_path, tiny_checkpoint, monkeypatch):
    """A threshold no artifact can meet: the export raises, and leaves only `<out>.failed/`."""
    impossible = spec.Variant("fp32", "fp32", spec.Tolerance(max_abs=0.0))
    monkeypatch.setenv("COLQWEN2_EXPORT_CACHE", "off")  # the threshold is patched in memory, not in the sources
    monkeypatch.setitem(spec.VARIANTS, "fp32", impossible)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("a previous good export")
    with pytest.raises(ValidationError, match="max abs diff"):
        run_export(
            ExportOptions(
                checkpoint=str(tiny_checkpoint), out_dir=out, variants=("fp32",), validation_images=1, polygraphy=False
            )
        )
    assert (out / "old.txt").exists(), "a failed export must not replace a good one"
    failed = tmp_path / "out.failed"
    assert "FAIL" in (failed / "validation.md").read_text()
    assert not (tmp_path / "out.partial").exists()
