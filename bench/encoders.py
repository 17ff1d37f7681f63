"""Encoder speed record: colpali-engine PyTorch against the exported ONNX variants, in-process.

    python -m bench.encoders --size medium            # what `make bench-export` runs

Measures the median latency of one image-encoder call at batch 1 and 8, the runtimes taking turns
call by call (448 x 448 images,
`--threads` CPU threads for every runtime). PyTorch gets the processor's tensors (its own
preprocessing is not timed); the ONNX graphs get the letterboxed uint8 pixels, because
normalisation and patchify are part of the graph. Writes JSON and a markdown table to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .timing import cpu_name, interleaved_ms

ROOT = Path(__file__).resolve().parent.parent


def ensure_artifacts(size: str, image_size: int) -> tuple[Path, Path]:
    checkpoint = ROOT / "checkpoints" / size
    artifacts = ROOT / "artifacts" / f"{size}-{image_size}"
    if not (checkpoint / "config.json").exists():
        subprocess.run([sys.executable, "-m", "export.random_checkpoint", str(checkpoint), "--size", size], check=True)
    if not (artifacts / "validation.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "export",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(artifacts),
            "--image-size",
            str(image_size),
            "--no-polygraphy",
        ]
        subprocess.run(cmd, check=True)
    return checkpoint, artifacts


def run(size: str, image_size: int, threads: int, batches: tuple[int, ...], repeats: int) -> dict:
    import torch
    from PIL import Image

    from export.checkpoint import load_checkpoint
    from export.runtime import cpu_session
    from export.sample_images import calibration_images
    from export.spec import DEFAULT_VARIANTS
    from model_repository.colqwen2_serving.imaging import letterbox

    checkpoint, artifacts = ensure_artifacts(size, image_size)
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(str(checkpoint))
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    images = [letterbox(img, image_size) for img in calibration_images(max(batches), seed=5000)]
    sessions = {v: cpu_session(artifacts / v / "image_encoder.onnx", threads) for v in DEFAULT_VARIANTS}
    rows = []
    for batch in batches:
        pixels = np.stack(images[:batch])
        inputs = ckpt.processor.process_images([Image.fromarray(p) for p in pixels])

        def torch_call(inputs=inputs):
            with torch.no_grad():
                ckpt.model(**inputs)

        calls = {"colpali-engine PyTorch fp32": torch_call} | {
            f"ORT {v}": (lambda s=s, p=pixels: s.run(None, {"pixel_values": p})) for v, s in sessions.items()
        }
        for name, (median, times) in interleaved_ms(calls, repeats).items():
            rows.append({"runtime": name, "batch": batch, "median_ms": median, "times_ms": times})
    return {
        "command": " ".join(["python -m bench.encoders", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "threads": threads, "python": platform.python_version()},
        "checkpoint": {"size": size, "parameters": n_params, "image_size": image_size},
        "versions": {k: version(k) for k in ("torch", "onnxruntime", "colpali-engine", "transformers")},
        "repeats": repeats,
        "results": rows,
    }


def to_markdown(report: dict) -> str:
    ck, m = report["checkpoint"], report["machine"]
    lines = [
        f"Image encoder, {ck['size']} random checkpoint ({ck['parameters'] / 1e6:.1f} M parameters), "
        f"{ck['image_size']} x {ck['image_size']}, {m['cpu']}, {m['threads']} threads, "
        f"median of {report['repeats']} calls, the runtimes taking turns. `{report['command']}`, {report['date']}.",
        "",
        "| runtime | batch | median ms / call | ms / image | images / s | speed-up vs PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    base = {r["batch"]: r["median_ms"] for r in report["results"] if r["runtime"].startswith("colpali")}
    for r in report["results"]:
        per_image = r["median_ms"] / r["batch"]
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['median_ms']:.1f} | {per_image:.1f} | {1e3 / per_image:.2f} "
            f"| {base[r['batch']] / r['median_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="encoder latency: PyTorch vs ONNX Runtime variants")
    p.add_argument("--size", default="medium", choices=("tiny", "medium", "wide", "real"))
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    report = run(args.size, args.image_size, args.threads, tuple(int(b) for b in args.batches.split(",")), args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"encoders-{args.size}-{args.image_size}-cpu{args.threads}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stem}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
