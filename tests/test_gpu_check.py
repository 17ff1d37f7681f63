"""bench.gpu_check: the dry run a host without CUDA does, the model it builds in memory, the feeds it gives the
graphs, its handling of out-of-memory cases, and its report formatting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import gpu_check
from model_repository.colqwen2_serving.grid import PixelLimits, smart_resize, token_grid

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = PixelLimits(3136, 602112)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory):
    """`python -m bench.gpu_check --device cpu --out <tmp>`, as a CPU host or CI runs it."""
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory: pytest.TempPathFactory):
    """The tiny checkpoint as `export.random_checkpoint` writes it, loaded through colpali-engine."""
    from export.checkpoint import load_checkpoint
    from export.random_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny", "tiny", seed=0)
    return path, load_checkpoint(str(path))


def test_dry_run_exits_zero_and_says_why(dry_run):
    proc, _ = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not torch.cuda.is_available():
        first = proc.stdout.splitlines()[0]
        assert first.startswith(gpu_check.NO_CUDA_LINE), first
        assert "dry run" in first


def test_dry_run_report_has_every_case_with_finite_numbers(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] is True and report["device"]["type"] == "cpu"
    assert report["model"]["size"] == "tiny" and report["model"]["parameters"] > 0
    assert report["command"].startswith("python -m bench.gpu_check") and report["date"].endswith("+00:00")
    assert report["versions"]["torch"] == torch.__version__
    rows = report["results"]
    cases = {(r["resolution"], r["dtype"], r["batch"]) for r in rows}
    assert cases == {(res, d, b) for res in ("fixed 448", "native") for d in ("fp32", "bf16") for b in (1, 2)}
    assert len(rows) == len(cases)
    for r in rows:
        assert r["status"] == "ok" and r["finite"] is True, r
        for key in ("p50_ms", "mean_ms", "min_ms", "images_per_s", "vectors_per_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert len(r["times_ms"]) == report["settings"]["repeats"]
        assert r["peak_memory_bytes"] is None  # not measured on the CPU
        if r["dtype"] == "bf16":
            assert r["cosine_mean"] > 0.95 and r["cosine_min"] > 0.9, r
            assert r["features_cosine_min"] > 0.9, r
        else:
            assert "cosine_mean" not in r


def test_dry_run_resolutions_come_from_the_serving_grid_math(dry_run):
    _, out = dry_run
    report = json.loads((out / "gpu-check.json").read_text())
    fixed, native = report["resolutions"]
    assert (fixed["name"], fixed["pixels"], fixed["grid"]) == ("fixed 448", [448, 448], [16, 16])
    assert (fixed["patches"], fixed["visual_tokens"]) == (1024, 256)
    height, width = smart_resize(400, 1000, PUBLISHED)  # the 1000 x 400 chart under the published limits
    assert native["pixels"] == [height, width] and native["grid"] == list(token_grid(height, width))
    assert native["visual_tokens"] == native["grid"][0] * native["grid"][1] == 504
    # the image prompt: its text tokens around one image token per visual token
    assert native["sequence"] - native["visual_tokens"] == fixed["sequence"] - fixed["visual_tokens"] > 0


def test_dry_run_writes_the_markdown_table(dry_run):
    _, out = dry_run
    text = (out / "gpu-check.md").read_text()
    assert text.startswith("# GPU check: tiny random ColQwen2")
    assert "**Dry run**" in text
    header = "| resolution | dtype | batch | p50 ms / call |"
    assert header in text
    table = [line for line in text.splitlines() if line.startswith(("| fixed 448 |", "| native |"))]
    assert len([line for line in table if "| ok |" in line]) == 8


def test_in_memory_model_is_the_saved_random_checkpoint(tiny_saved):
    path, loaded = tiny_saved
    from model_repository.colqwen2_serving.prompts import PromptTokenizer

    built = gpu_check.build_model("tiny", seed=0, device="cpu")
    mine, theirs = built.model.state_dict(), loaded.model.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    saved = PromptTokenizer.from_processor_dir(path)
    assert built.prompts.image_prompt_ids(6) == saved.image_prompt_ids(6)
    assert (built.prompts.pad_id, built.prompts.image_token_id) == (saved.pad_id, saved.image_token_id)
    assert built.limits == PixelLimits.from_processor_dir(path) == PUBLISHED


def test_the_check_feeds_the_graphs_what_colpali_engine_computes(tiny_saved):
    """The timed call (vision graph, then the text graph over the image prompt) gives `ColQwen2.forward`'s output
    for the same image, for every image of a batch, at both resolutions."""
    from export.sample_images import keepa_chart
    from model_repository.colqwen2_serving.imaging import letterbox

    _, loaded = tiny_saved
    built = gpu_check.build_model("tiny", seed=0, device="cpu")
    graphs = gpu_check.build_graphs(built)
    chart = keepa_chart(gpu_check.CHART_SEED, *gpu_check.CHART_SIZE)
    from PIL import Image

    images = {"fixed 448": Image.fromarray(letterbox(chart, gpu_check.FIXED_SIZE)), "native": chart}
    hidden = built.model.config.text_config.hidden_size
    with torch.inference_mode():
        for work in gpu_check.workloads(built):
            feeds = gpu_check.make_feeds(work, 2, built.prompts, hidden)
            features, embeddings = gpu_check.image_call(graphs, feeds, "cpu")
            ref = loaded.model(**loaded.processor.process_images([images[work.name]]))[0].numpy()
            assert embeddings.shape == (2, *ref.shape), work.name
            for row in embeddings.numpy():
                assert np.abs(row - ref).max() < 1e-5, work.name
            assert features.shape == (2, work.visual_tokens, hidden)


def test_out_of_memory_is_recorded_and_the_run_goes_on(monkeypatch):
    real_run_case = gpu_check.run_case

    def run_case(graphs, feeds, device, warmup, repeats):
        if feeds.vision[0].shape[0] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_run_case(graphs, feeds, device, warmup, repeats)

    monkeypatch.setattr(gpu_check, "run_case", run_case)
    checked = gpu_check.run_check("tiny", "cpu", ("fp32", "bf16"), (1, 2), 0, 1, log=lambda _: None)
    rows = {(r["resolution"], r["dtype"], r["batch"]): r for r in checked["results"]}
    assert len(rows) == 8
    for (_, dtype, batch), row in rows.items():
        if batch == 2:
            assert row["status"] == "oom" and "out of memory" in row["error"]
        else:
            assert row["status"] == "ok"
            assert dtype == "fp32" or row["cosine_mean"] > 0.95
    report = _report(results=checked["results"], resolutions=checked["resolutions"])
    text = gpu_check.to_markdown(report)
    assert "| fixed 448 | bf16 | 2 | – | – | – | – | – | – | – | – | oom: OutOfMemoryError: CUDA out of memory" in text


def test_weights_that_do_not_fit_mark_every_case_of_their_dtype(monkeypatch):
    real_materialise = gpu_check.materialise

    def materialise(master, dtype, device):
        if dtype == "bf16":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.40 GiB")
        return real_materialise(master, dtype, device)

    monkeypatch.setattr(gpu_check, "materialise", materialise)
    checked = gpu_check.run_check("tiny", "cpu", ("fp32", "bf16"), (1,), 0, 1, log=lambda _: None)
    statuses = {(r["resolution"], r["dtype"]): (r["status"], r.get("error")) for r in checked["results"]}
    assert statuses == {
        ("fixed 448", "fp32"): ("ok", None),
        ("native", "fp32"): ("ok", None),
        ("fixed 448", "bf16"): ("oom", "loading the weights"),
        ("native", "bf16"): ("oom", "loading the weights"),
    }
    assert checked["weights"]["bf16"]["bytes"] is None and "out of memory" in checked["weights"]["bf16"]["error"]


def test_cuda_asked_for_without_a_gpu_fails_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    assert gpu_check.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda, but no CUDA GPU found") and "\n" not in err


def test_bad_options_fail_before_any_work(capsys):
    assert gpu_check.main(["--device", "cpu", "--dtypes", "fp8"]) == 2
    assert gpu_check.main(["--device", "cpu", "--batch", "1,x"]) == 2
    assert gpu_check.main(["--device", "cpu", "--batch", "0"]) == 2
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def test_slug_and_default_out():
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_check.slug("  NVIDIA GeForce RTX 4090 (Laptop) ") == "nvidia-geforce-rtx-4090-laptop"
    assert gpu_check.slug("???") == "unknown"
    results = ROOT / "bench" / "results"
    assert gpu_check.default_out("real", "NVIDIA L4", False) == results / "gpu-check-nvidia-l4"
    assert gpu_check.default_out("wide", "NVIDIA L4", False) == results / "gpu-check-wide-nvidia-l4"
    assert gpu_check.default_out("tiny", "Intel Xeon", True) == ROOT / "build" / "gpu-check-dry-run"


def test_parse_list():
    assert gpu_check.parse_list("1, 32,,32", int) == (1, 32)
    assert gpu_check.parse_list("bf16,fp32") == ("bf16", "fp32")
    with pytest.raises(ValueError):
        gpu_check.parse_list("1,a", int)


def test_summarise_times():
    stats = gpu_check.summarise_times([10.0, 30.0, 20.0, 40.0], batch=4, vectors_per_image=271)
    assert stats["p50_ms"] == 25.0 and stats["mean_ms"] == 25.0 and stats["min_ms"] == 10.0
    assert stats["images_per_s"] == pytest.approx(160.0)
    assert stats["vectors_per_s"] == pytest.approx(160.0 * 271)
    with pytest.raises(ValueError):
        gpu_check.summarise_times([], 1, 1)


def test_cosine_stats():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 5, 8)).astype(np.float32)
    assert gpu_check.cosine_stats(ref * 3, ref) == pytest.approx((1.0, 1.0))
    flipped = ref.copy()
    flipped[0, 0] *= -1
    mean, low = gpu_check.cosine_stats(flipped, ref)
    assert low == pytest.approx(-1.0) and mean == pytest.approx(0.8)
    with pytest.raises(ValueError):
        gpu_check.cosine_stats(ref[:1], ref)


def _resolution(name: str, pixels: list[int], grid: list[int], tokens: int) -> dict:
    return {"name": name, "source": "Keepa chart 1000 x 400", "pixels": pixels, "grid": grid, "visual_tokens": tokens,
            "sequence": tokens + 15}  # fmt: skip


def _report(**overrides) -> dict:
    """A GPU report as `main` writes it, with made-up numbers."""
    report = {
        "command": "python -m bench.gpu_check",
        "date": "2026-01-01T00:00:00+00:00",
        "dry_run": False,
        "elapsed_s": 61.0,
        "device": {
            "type": "cuda",
            "name": "NVIDIA H100 80GB HBM3",
            "total_memory_bytes": 85_000_000_000,
            "driver": "570.1",
        },
        "versions": {"torch": "2.x", "cuda": "12.8", "transformers": "5", "colpali-engine": "0.3"},
        "model": {"size": "real", "seed": 0, "parameters": 2_209_000_000, "vision_parameters": 665_000_000},
        "settings": {"repeats": 10, "warmup": 3},
        "weights": {"fp32": {"bytes": 8_836_000_000}, "fp16": {"bytes": 4_418_000_000}},
        "resolutions": [
            _resolution("fixed 448", [448, 448], [16, 16], 256),
            _resolution("native", [392, 1008], [14, 36], 504),
        ],
        "results": [
            {
                "resolution": "fixed 448",
                "dtype": "fp16",
                "batch": 1,
                "status": "ok",
                "p50_ms": 12.5,
                "mean_ms": 12.7,
                "images_per_s": 78.7,
                "vectors_per_s": 21_000.0,
                "peak_memory_bytes": 5_000_000_000,
                "cosine_mean": 0.9995,
                "cosine_min": 0.995,
                "features_cosine_min": 0.999,
                "finite": True,
            },
            {
                "resolution": "fixed 448",
                "dtype": "fp16",
                "batch": 32,
                "status": "ok",
                "p50_ms": 140.0,
                "mean_ms": 141.0,
                "images_per_s": 227.0,
                "vectors_per_s": 61_500.0,
                "peak_memory_bytes": 9_100_000_000,
                "cosine_mean": 0.9994,
                "cosine_min": 0.994,
                "features_cosine_min": 0.998,
                "finite": True,
            },
            {
                "resolution": "fixed 448",
                "dtype": "bf16",
                "batch": 1,
                "status": "ok",
                "p50_ms": 12.0,
                "mean_ms": 12.1,
                "images_per_s": 82.6,
                "vectors_per_s": 22_400.0,
                "peak_memory_bytes": 5_000_000_000,
                "cosine_mean": None,
                "cosine_min": None,
                "features_cosine_min": None,
                "finite": False,
            },
            {
                "resolution": "native",
                "dtype": "fp16",
                "batch": 1,
                "status": "ok",
                "p50_ms": 30.0,
                "mean_ms": 30.0,
                "images_per_s": 999.0,
                "vectors_per_s": 1.0,
                "peak_memory_bytes": 1,
                "finite": False,
            },
            {"resolution": "native", "dtype": "fp16", "batch": 32, "status": "oom", "error": "OutOfMemoryError: x"},
        ],
    }
    report.update(overrides)
    return report


def test_markdown_of_a_gpu_report():
    text = gpu_check.to_markdown(_report())
    assert text.startswith("# GPU check: real random ColQwen2 on NVIDIA H100 80GB HBM3")
    assert "**Dry run**" not in text and "driver 570.1" in text and "2,209.0 M parameters" in text
    row = "| fixed 448 | fp16 | 1 | 12.50 | 12.70 | 78.70 | 21,000 | 5.00 | 0.999500 | 0.995000 | 0.999000 | ok |"
    assert row in text
    assert "| ok, NON-FINITE output |" in text
    assert "| native | fp16 | 32 | – | – | – | – | – | – | – | – | oom: OutOfMemoryError: x |" in text
    assert "fp32 8,836.0 MB, fp16 4,418.0 MB" in text
    # the targets: 227 images/s at batch 32 meets 200; p50 12.5 ms at batch 1 meets 15 ms; 9.1 GB misses 8 GB
    assert "| fixed 448 | >= 200 images/s | 227.0 (batch 32) | yes |" in text
    assert "| fixed 448 | p50 <= 15 ms | 12.50 ms (batch 1) | yes |" in text
    assert "| fixed 448 | peak < 8 GB | 9.10 GB (largest batch) | no |" in text
    assert "| native | fp16 | no successful fp16 case | no |" in text  # its one ok case is not finite


def test_json_has_no_nan():
    cleaned = gpu_check._finite_or_none({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert cleaned == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    json.loads(json.dumps(cleaned, allow_nan=False))
