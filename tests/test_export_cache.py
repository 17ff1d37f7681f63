"""The export cache (export/cache.py): content-addressed, sealed, never stale, never partial."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from export import cache


@dataclass(frozen=True)
class Options:
    checkpoint: str
    out_dir: Path
    variants: tuple[str, ...] = ("fp32",)
    validation_images: int = 4


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(cache.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _checkpoint(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def _artifacts(folder: Path) -> Path:
    (folder / "fp32").mkdir(parents=True)
    (folder / "fp32" / "vision.onnx").write_bytes(b"graph" * 100)
    (folder / "manifest.json").write_text(json.dumps({"variants": ["fp32"]}))
    return folder


def test_the_key_follows_the_checkpoint_bytes_and_the_options_not_the_folder(tmp_path, root):
    a = _checkpoint(tmp_path / "a")
    b = _checkpoint(tmp_path / "b")
    options = Options(str(a), tmp_path / "out")
    key = cache.cache_key(a, options)
    assert key and key == cache.cache_key(b, replace(options, checkpoint=str(b), out_dir=tmp_path / "elsewhere"))
    assert cache.cache_key(a, replace(options, variants=("fp32", "int8"))) == key, "variants name the entry"
    assert cache.cache_key(a, replace(options, validation_images=1)) != key
    (b / "model.safetensors").write_bytes(b"weightz")
    assert cache.cache_key(b, options) != key
    assert cache.cache_key("vidore/colqwen2-v1.0", options) is None, "a hub id's bytes are unknown: no entry"


def test_a_stored_export_is_restored_as_a_folder_of_its_own(tmp_path, root):
    artifacts = _artifacts(tmp_path / "artifacts")
    entry = cache.store("k1", ["fp32"], artifacts)
    assert entry == root / "k1-fp32" and cache.sealed(entry)
    assert cache.store("k1", ["fp32"], artifacts) is None, "an entry is written once"
    out = tmp_path / "out"
    _artifacts(out / "stale")  # whatever was there is replaced
    assert cache.restore("k1", ["fp32"], out)
    assert sorted(p.name for p in out.iterdir()) == ["fp32", "manifest.json"]
    assert (out / "fp32" / "vision.onnx").read_bytes() == b"graph" * 100
    shutil.rmtree(out)  # the caller's folder goes; the entry stays whole
    assert cache.sealed(entry) and cache.restore("k1", ["fp32"], tmp_path / "again")
    assert not cache.restore("other", ["fp32"], tmp_path / "miss") and not (tmp_path / "miss").exists()


def test_a_request_for_some_variants_takes_the_smallest_entry_that_holds_them(tmp_path, root):
    artifacts = _artifacts(tmp_path / "artifacts")
    full = cache.store("k1", ["fp32", "fp16", "int8", "int8_dynamic"], artifacts)
    assert cache.find("k1", ["fp32"]) == full and cache.find("k1", ["int8", "fp16"]) == full
    assert cache.find("k1", ["fp8"]) is None
    small = cache.store("k1", ["fp32"], artifacts)
    assert cache.find("k1", ["fp32"]) == small and cache.find("k1", ["fp32", "fp16"]) == full
    assert cache.find("k2", ["fp32"]) is None


def test_an_altered_or_partial_entry_is_never_used(tmp_path, root):
    artifacts = _artifacts(tmp_path / "artifacts")
    entry = cache.store("k1", ["fp32"], artifacts)
    (entry / "fp32" / "vision.onnx").unlink()
    (entry / "fp32" / "vision.onnx").write_bytes(b"trunc")
    assert not cache.restore("k1", ["fp32"], tmp_path / "out") and not entry.exists(), "an altered entry is removed"
    shutil.copytree(artifacts, root / "k2-fp32")  # no seal: a copy that stopped half-way looks like this
    assert not cache.restore("k2", ["fp32"], tmp_path / "out") and not (root / "k2-fp32").exists()


def test_off_means_off(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.cache_root() is None
    assert cache.store("k1", ["fp32"], _artifacts(tmp_path / "artifacts")) is None
    assert not cache.restore("k1", ["fp32"], tmp_path / "out")


def test_a_second_export_of_the_same_checkpoint_is_the_first(tiny_checkpoint, tiny_artifacts, tmp_path):
    """The session's export went through the cache: the same export asked again is restored, not rebuilt."""
    from export.pipeline import ExportOptions, run_export

    root = cache.cache_root()
    assert root is not None, "the test suite runs with the cache on (COLQWEN2_EXPORT_CACHE=off turns it off)"
    options = ExportOptions(checkpoint=str(tiny_checkpoint), out_dir=tmp_path / "again")
    key = cache.cache_key(tiny_checkpoint, options)
    assert cache.sealed(root / cache.entry_name(key, options.variants))
    out = run_export(options)
    assert json.loads((out / "manifest.json").read_text()) == json.loads((tiny_artifacts / "manifest.json").read_text())
    last = json.loads((root / "exports.jsonl").read_text().splitlines()[-1])
    assert last["key"] == key and last["hit"] and last["out"] == str(out)
    # what `make serve` asks for on a CPU host (fp32 only) is the same export
    served = run_export(replace(options, out_dir=tmp_path / "served", variants=("fp32",)))
    assert json.loads((root / "exports.jsonl").read_text().splitlines()[-1])["hit"]
    assert (served / "int8" / "vision_encoder.onnx").exists()


def test_one_process_builds_an_entry_while_the_others_wait(root):
    import threading

    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        with cache.locked("k1"):
            order.append("second")

    with cache.locked("k1"):
        thread = threading.Thread(target=second)
        thread.start()
        inside.wait(0.5)  # the second asks while the first still builds
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
    with cache.locked(None):  # a hub id: nothing to hold
        pass
