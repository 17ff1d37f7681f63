"""Offline demo of the exported artifacts: embed sample Keepa charts and product images with
ONNX Runtime, then search them by text and by image with MaxSim.

    python -m export.demo --artifacts artifacts/tiny        # what `make demo` runs

This runs the encoders in-process; the Triton server, the REST gateway and Qdrant take this
job over as they land (see the README's roadmap).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model_repository.colqwen2_serving.imaging import letterbox

from .runtime import cpu_session, embed_images
from .sample_images import keepa_chart, product_image
from .validate import degrade, maxsim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"))
    p.add_argument("--variant", default="int8_dynamic", help="fp32, fp16, int8 or int8_dynamic (CPU default)")
    p.add_argument("--query", default="keepa price history chart")
    args = p.parse_args(argv)

    from colpali_engine.models import ColQwen2Processor

    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    size = manifest["image_size"]
    processor = ColQwen2Processor.from_pretrained(args.artifacts / "processor")
    image_encoder = cpu_session(args.artifacts / args.variant / "image_encoder.onnx", threads=2)
    query_encoder = cpu_session(args.artifacts / args.variant / "query_encoder.onnx", threads=2)

    names = [f"keepa_chart_{i}" for i in range(6)] + [f"product_{i}" for i in range(6)]
    pixels = np.stack(
        [letterbox(keepa_chart(i), size) for i in range(6)] + [letterbox(product_image(i), size) for i in range(6)]
    )
    t = time.perf_counter()
    docs = embed_images(image_encoder, pixels)
    elapsed = time.perf_counter() - t
    print(f"checkpoint {manifest['checkpoint']} ({manifest['parameters'] / 1e6:.1f} M parameters), {args.variant}")
    print(f"embedded {len(docs)} images at {size}x{size} in {elapsed:.2f} s: {docs.shape[1]} vectors x 128 each\n")

    batch = processor.process_queries([args.query])
    q = query_encoder.run(
        None, {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    )[0]
    scores = maxsim(q, docs, batch["attention_mask"].numpy())[0]
    print(f'text query "{args.query}": top 5 by MaxSim')
    for rank, i in enumerate(np.argsort(-scores)[:5], 1):
        print(f"  {rank}. {names[i]:<16} {scores[i]:.3f}")

    query_image = degrade(pixels[8:9], seed=1)  # a JPEG-recompressed, shifted copy of product_2
    qi = image_encoder.run(None, {"pixel_values": query_image})[0]
    scores = maxsim(qi, docs)[0]
    print("\nimage query (a degraded copy of product_2): top 3 by MaxSim")
    for rank, i in enumerate(np.argsort(-scores)[:3], 1):
        print(f"  {rank}. {names[i]:<16} {scores[i]:.3f}")

    if manifest.get("random_weights"):
        print(
            "\nNote: the offline default checkpoint has RANDOM weights (real architecture, no download), so text"
            "\nrankings are meaningless; near-duplicate image search already works. For real results:"
            "\n  make demo CHECKPOINT=vidore/colqwen2-v1.0   (downloads the weights; the LoRA is merged)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
