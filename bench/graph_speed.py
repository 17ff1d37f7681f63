"""Graph speed record: colpali-engine PyTorch against the exported ONNX variants, in one process.

    python -m bench.graph_speed --size medium            # what `make bench-export` runs

Embeds the first 8 images of the serving benchmark's mixed workload (`load.WORKLOAD`: Keepa charts,
product photos, a tall image) at native resolution, one image per call (the 8 in turn) and all 8 in
one call, the runtimes taking turns (`--threads` CPU threads for every runtime); a measurement is
one pass over the 8 images. PyTorch gets the processor's tensors (its
own preprocessing is not timed); the ONNX graphs get the service's preprocessed patches and run
through the serving runners (vision graph, then the text graph), because normalisation and the
patch embedding are part of the graph. Writes JSON and a markdown table to bench/results/.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .timing import cpu_name, interleaved_ms

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 8  # the first images of the mixed workload


def ensure_artifacts(size: str) -> tuple[Path, Path]:
    checkpoint = ROOT / "checkpoints" / size
    artifacts = ROOT / "artifacts" / size
    if not (checkpoint / "config.json").exists():
        subprocess.run([sys.executable, "-m", "export.random_checkpoint", str(checkpoint), "--size", size], check=True)
    if not (artifacts / "validation.json").exists():
        cmd = [sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--out", str(artifacts)]
        subprocess.run([*cmd, "--no-polygraphy"], check=True)
    return checkpoint, artifacts


def run(size: str, threads: int, batches: tuple[int, ...], repeats: int) -> dict:
    import torch
    from PIL import Image

    from export.checkpoint import load_checkpoint
    from export.spec import DEFAULT_VARIANTS
    from model_repository.colqwen2_serving.feeds import TextItem
    from model_repository.colqwen2_serving.imaging import preprocess_image
    from model_repository.colqwen2_serving.preprocess import image_item

    from .load import payloads, workload_summary
    from .references import Pipeline

    checkpoint, artifacts = ensure_artifacts(size)
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(str(checkpoint))
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    data = payloads(IMAGES)
    pipelines = {v: Pipeline.load(artifacts, v, threads, gpu=False) for v in DEFAULT_VARIANTS}
    some = next(iter(pipelines.values()))
    items = [image_item(preprocess_image(d, some.resolution)) for d in data]
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in data]
    rows = []
    count = len(data)
    for batch in batches:
        groups = [(items[i : i + batch], images[i : i + batch]) for i in range(0, count, batch)]
        inputs = [ckpt.processor.process_images(pil) for _, pil in groups]

        def torch_call(inputs=inputs):
            with torch.no_grad():
                for one in inputs:
                    ckpt.model(**one)

        def onnx_call(pipeline, groups=groups):
            for chosen, _ in groups:
                visual = pipeline.vision.visual_features(chosen)
                prompts = [np.array(pipeline.tokenizer.image_prompt_ids(len(v)), dtype=np.int64) for v in visual]
                pipeline.text.vectors([TextItem(p, v, i.grid) for p, v, i in zip(prompts, visual, chosen, strict=True)])

        calls = {"colpali-engine PyTorch fp32": torch_call} | {
            f"ORT {v}": (lambda p=p: onnx_call(p)) for v, p in pipelines.items()
        }
        vectors = sum(15 + item.grid[0] * item.grid[1] for item in items)
        for name, (median, times) in interleaved_ms(calls, repeats).items():
            rows.append(
                {"runtime": name, "batch": batch, "images": count, "vectors": vectors, "median_ms": median,
                 "times_ms": times}
            )  # fmt: skip
    return {
        "command": " ".join(["python -m bench.graph_speed", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "threads": threads, "python": platform.python_version()},
        "checkpoint": {"size": size, "parameters": n_params},
        "workload": workload_summary(IMAGES),
        "versions": {k: version(k) for k in ("torch", "onnxruntime", "colpali-engine", "transformers")},
        "repeats": repeats,
        "results": rows,
    }


def to_markdown(report: dict) -> str:
    ck, m = report["checkpoint"], report["machine"]
    lines = [
        f"Vision + text graphs, {ck['size']} random checkpoint ({ck['parameters'] / 1e6:.1f} M parameters), native "
        f"resolution, the first {IMAGES} images of the mixed workload ({report['workload']}); {m['cpu']}, "
        f"{m['threads']} threads, median of {report['repeats']} passes over the {IMAGES} images, the runtimes taking "
        f"turns. `{report['command']}`, {report['date']}.",
        "",
        "| runtime | images / call | median ms / pass | ms / image | images / s | vectors / s | speed-up vs PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["batch"]: r["median_ms"] for r in report["results"] if r["runtime"].startswith("colpali")}
    for r in report["results"]:
        per_image = r["median_ms"] / r["images"]
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['median_ms']:.1f} | {per_image:.1f} | {1e3 / per_image:.2f} "
            f"| {r['vectors'] * 1e3 / r['median_ms']:.0f} | {base[r['batch']] / r['median_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="graph latency: PyTorch vs ONNX Runtime variants, native resolution")
    p.add_argument("--size", default="medium", choices=("tiny", "medium", "wide", "real"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    report = run(args.size, args.threads, tuple(int(b) for b in args.batches.split(",")), args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"graphs-{args.size}-cpu{args.threads}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
