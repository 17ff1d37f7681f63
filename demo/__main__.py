"""The offline demo: Triton serves the exported checkpoint, Qdrant (embedded) indexes sample
Keepa charts and product photos, and a text query and an image query search them.

    python -m demo --artifacts artifacts/tiny      # what `make demo` runs after exporting

Steps: render the model repository and start Triton on free local ports; write the samples;
index them into embedded Qdrant (twice: the second pass finds every image already there);
search by text and by image (prefetch on the pooled vector, MaxSim rerank); write an HTML page;
stop Triton.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from colqwen2_client import ColQwen2Client
from colqwen2_client.qdrant import VisualIndex, open_qdrant
from colqwen2_client.report import table, write_html
from PIL import Image

from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer, free_port
from model_repository.supervisor import Supervisor, SupervisorSettings

from .samples import write_samples

RANDOM_WEIGHTS_NOTE = (
    "The offline default checkpoint has RANDOM weights (the real ColQwen2 architecture, built here without a "
    "download), so text rankings mean nothing yet; near-duplicate image search already works. For real results: "
    "make demo MODEL=vidore/colqwen2-v1.0 (downloads the weights once; the LoRA adapter is merged at export)."
)


def degraded_copy(path: Path, out: Path) -> Path:
    """A re-shared copy: recompressed as a low-quality JPEG (what chat apps and scrapers do)."""
    with Image.open(path) as img:
        img.convert("RGB").save(out, "JPEG", quality=50)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"))
    parser.add_argument("--workdir", type=Path, default=Path("build/demo"))
    parser.add_argument("--query", default="keepa price history chart with a price drop")
    parser.add_argument("--precision", choices=["fp16", "int8"], default="fp16")
    args = parser.parse_args(argv)

    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    work = args.workdir
    repository = render(RenderOptions(args.artifacts, work / "model_repository"))
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    log_path = work / "tritonserver.log"
    started = time.perf_counter()
    with open(log_path, "w") as log, Supervisor(server, SupervisorSettings(ready_timeout=300), server_log=log):
        print(
            f"Triton ready in {time.perf_counter() - started:.1f} s under the supervisor "
            f"(grpc://{server.grpc_url}, log {log_path})"
        )
        with ColQwen2Client(f"grpc://{server.grpc_url}", precision=args.precision) as client:
            info = client.server_info()
            print(
                f"checkpoint {manifest['checkpoint']} ({manifest['parameters'] / 1e6:.1f} M parameters), "
                f"colqwen2 serving {info.get('precision')} on {info.get('device')}, health {client.health()['status']}"
            )
            samples = write_samples(work / "samples")
            kinds = [{"kind": "keepa_chart" if p.name.startswith("keepa") else "product_image"} for p in samples]
            index = VisualIndex(client, open_qdrant(work / "qdrant"))
            t = time.perf_counter()
            report = index.index([str(p.resolve()) for p in samples], kinds)
            print(
                f"\nindexed {report.indexed} new images ({report.skipped} already there) in "
                f"{time.perf_counter() - t:.1f} s into embedded Qdrant at {work / 'qdrant'}"
            )
            again = index.index([str(p.resolve()) for p in samples], kinds)
            print(f"indexing again: {again.indexed} new, {again.skipped} skipped; {index.count()} points in total")

            text_hits = index.search(text=args.query, limit=5)
            print(f'\ntext query "{args.query}": top 5\n{table(text_hits)}')
            probe = degraded_copy(samples[-3], work / "query_photo.jpg")
            image_hits = index.search(image=str(probe), limit=3)
            print(f"\nimage query {probe} (a JPEG q50 copy of {samples[-3].name}): top 3")
            print(table(image_hits))

            note = RANDOM_WEIGHTS_NOTE if manifest.get("random_weights") else ""
            page = write_html(
                work / "results.html",
                [(f'text "{args.query}"', text_hits), (f"image {probe.name}", image_hits)],
                note,
            )
            print(f"\nresults page: {page.resolve()}")
    print("Triton stopped.")
    if note:
        print(f"\nNote: {note}")
    found = image_hits and Path(image_hits[0].payload.get("source", "")).name == samples[-3].name
    if not found:
        print("error: the image query did not find its original first", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
