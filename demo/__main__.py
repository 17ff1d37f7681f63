"""The offline demo: Triton serves the exported checkpoint, Qdrant (embedded) indexes sample
Keepa charts and product photos, and a text query and an image query search them.

    python -m demo --artifacts artifacts/tiny      # what `make demo` runs after exporting

Steps: render the model repository and start Triton on free local ports; write the samples and a
catalog manifest (one line per item, keyed by marketplace, ASIN and kind); index the catalog into
embedded Qdrant (twice: the second pass embeds nothing); redraw one chart and index again (its
point is replaced, not duplicated); search by text, by image, and by chart within charts only (a
filter applied in both stages); write an HTML page with each query beside its results; stop Triton.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from colqwen2_client import ColQwen2Client
from colqwen2_client.catalog import read_manifest
from colqwen2_client.qdrant import VisualIndex, open_qdrant
from colqwen2_client.report import table, write_html
from PIL import Image

from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer
from model_repository.supervisor import Supervisor, SupervisorSettings

from .samples import redraw_chart, write_catalog, write_samples

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

    manifest_info = json.loads((args.artifacts / "manifest.json").read_text())
    work = args.workdir
    repository = render(RenderOptions(args.artifacts, work / "model_repository"))
    server = TritonServer.on_free_ports(repository)
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
                f"checkpoint {manifest_info['checkpoint']} ({manifest_info['parameters'] / 1e6:.1f} M parameters), "
                f"colqwen2 serving {info.get('precision')} on {info.get('device')}, health {client.health()['status']}"
            )
            samples = write_samples(work / "samples")
            manifest = write_catalog(work / "catalog.jsonl", samples)
            items = read_manifest(manifest).items  # each index run reads the files again
            index = VisualIndex(client, open_qdrant(work / "qdrant"))
            report = index.index(items)
            print(
                f"\nindexed {manifest.name}: {report.new} new, {report.replaced} replaced, {report.unchanged} "
                f"unchanged in {report.seconds:.1f} s ({report.summary()['images_per_s']} images/s) into embedded "
                f"Qdrant at {work / 'qdrant'}"
            )
            again = index.index(items)
            print(f"indexing again: {again.unchanged} unchanged, {again.embedded} embedded; {index.count()} points")

            refreshed_key = items[0].key
            redraw_chart(samples[0])
            refresh = index.index(items)
            print(
                f"chart {refreshed_key} redrawn: {refresh.replaced} replaced, {refresh.unchanged} unchanged, "
                f"{refresh.embedded} embedded; still {index.count()} points"
            )

            text_hits = index.search(text=args.query, limit=5)
            print(f'\ntext query "{args.query}": top 5\n{table(text_hits)}')
            probe = degraded_copy(samples[-3], work / "query_photo.jpg")
            image_hits = index.search(image=str(probe), limit=3)
            print(f"\nimage query {probe} (a JPEG q50 copy of {samples[-3].name}): top 3")
            print(table(image_hits))
            chart_probe = degraded_copy(samples[2], work / "query_chart.jpg")
            chart_hits = index.search(image=str(chart_probe), limit=4, where={"kind": "keepa_chart"})
            print(f"\nimage query {chart_probe.name} (a copy of {samples[2].name}) where kind=keepa_chart: top 4")
            print(table(chart_hits))

            note = RANDOM_WEIGHTS_NOTE if manifest_info.get("random_weights") else ""
            page = write_html(
                work / "results.html",
                [
                    (f'text "{args.query}"', text_hits),
                    (f"image {probe.name}", image_hits, probe),
                    (f"chart {chart_probe.name}, charts only (where kind=keepa_chart)", chart_hits, chart_probe),
                ],
                note,
            )
            print(f"\nresults page: {page.resolve()}")
            index_points = index.count()
    print("Triton stopped.")
    if note:
        print(f"\nNote: {note}")
    problems = []
    if not (image_hits and Path(image_hits[0].payload.get("source", "")).name == samples[-3].name):
        problems.append("the image query did not find its original first")
    if not chart_hits or any(h.payload.get("kind") != "keepa_chart" for h in chart_hits):
        problems.append("the charts-only search returned something else")
    if (refresh.replaced, refresh.embedded) != (1, 1) or index_points != len(samples):
        problems.append("the redrawn chart did not replace its point")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
