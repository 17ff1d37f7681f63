"""The offline demo: Triton serves the exported checkpoint, Qdrant (its engine in process) indexes sample
Keepa charts and product photos, and a text query and an image query search them.

    python -m demo --artifacts artifacts/tiny      # what `make demo` runs after exporting

Steps: render the model repository and start Triton on free local ports; write the samples and a
catalog manifest (one line per item, keyed by marketplace, ASIN and kind); index the catalog into
Qdrant in process (twice: the second pass embeds nothing); redraw one chart and index again (its
point is replaced, not duplicated); search by text, by image, and by chart within charts only (a
filter applied in both stages), printing both stages of each query (the first stage's candidates, then the
MaxSim rerank); write an HTML page with each query beside both stages; stop Triton.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from colqwen2_client import ColQwen2Client
from colqwen2_client.catalog import read_manifest
from colqwen2_client.qdrant import VisualIndex, open_qdrant
from colqwen2_client.report import Section, table, write_html
from PIL import Image

from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer
from model_repository.supervisor import Supervisor, SupervisorSettings

from .samples import redraw_chart, write_catalog, write_samples

RANDOM_WEIGHTS_NOTE = (
    "What this page can and cannot show. The default checkpoint has RANDOM weights: the real ColQwen2 "
    "architecture, preprocessing, export and serving, built offline without a download. Image-to-image search "
    "of near-duplicates is real: a recompressed chart or a re-listed photo (brighter, recompressed) gives nearly "
    "the same visual tokens as its original, so MaxSim finds the original first, by a small margin. A different "
    "photo of the product (another angle, crop or scale) is beyond random features. Text search is not real: "
    "the query's tokens never learned to match images; they mostly meet the prompt tokens every image shares, "
    "so many images tie at one score (marked 'tie', ordered by key). For meaningful text results: "
    "make demo MODEL=vidore/colqwen2-v1.0 (downloads the weights once; the LoRA adapter is merged at export)."
)


def degraded_copy(path: Path, out: Path) -> Path:
    """A re-shared copy: recompressed as a low-quality JPEG (what chat apps and scrapers do)."""
    with Image.open(path) as img:
        img.convert("RGB").save(out, "JPEG", quality=40)
    return out


def another_shot(path: Path, out: Path) -> Path:
    """The product's photo as a marketplace re-lists it: brighter, a touch warmer, recompressed."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) * np.array([1.08, 1.05, 1.0], dtype=np.float32) + 6
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=75)
    return out


def show(
    index: VisualIndex,
    client: ColQwen2Client,
    title: str,
    *,
    text: str | None = None,
    image: Path | None = None,
    where: dict | None = None,
    limit: int = 5,
    shown: int = 8,
) -> Section:
    """Both stages of one query, printed and returned for the page."""
    query = client.embed_query(text) if text is not None else client.embed(image)
    first = index.first_stage_hits(query, where=where)
    hits = index.search_embedding(query, limit, where)
    stage = index.route(query)[0]
    print(f"\n{title}\nstage 1, {stage}: {len(first)} candidates, the best {min(shown, len(first))}:")
    print(table(first[:shown]))
    print(f"stage 2, MaxSim rerank: top {len(hits)}\n{table(hits)}")
    return Section(title, hits, query_text=text, query_image=image, first_stage=first[:shown], first_stage_name=stage)


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
                f"unchanged in {report.seconds:.1f} s ({report.summary()['images_per_s']} images/s) into "
                f"Qdrant (in process) at {work / 'qdrant'}"
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

            # The headline a random-weight model can honestly show: image-to-image search.
            chart_probe = degraded_copy(samples[2], work / "query_chart.jpg")
            title = (
                f"chart {chart_probe.name} (a JPEG q40 copy of {samples[2].name}), charts only (where kind=keepa_chart)"
            )
            chart = show(index, client, title, image=chart_probe, where={"kind": "keepa_chart"})
            photo_probe = another_shot(samples[-3], work / "query_photo.jpg")
            title = f"photo {photo_probe.name} ({samples[-3].name} re-listed: brighter, warmer, JPEG q75)"
            photo = show(index, client, title, image=photo_probe)
            text = show(index, client, f'text "{args.query}"', text=args.query)
            note = RANDOM_WEIGHTS_NOTE if manifest_info.get("random_weights") else ""
            page = write_html(work / "results.html", [chart, photo, text], note)
            print(f"\nresults page: {page.resolve()}")
            index_points = index.count()
            index.close()
    print("Triton stopped.")
    if note:
        print(f"\nNote: {note}")
    problems = []
    if not (chart.hits and Path(chart.hits[0].payload.get("source", "")).name == samples[2].name):
        problems.append("the degraded chart did not find its original first")
    if any(h.payload.get("kind") != "keepa_chart" for h in [*chart.hits, *chart.first_stage]):
        problems.append("the charts-only search returned something else")
    if not (photo.hits and Path(photo.hits[0].payload.get("source", "")).name == samples[-3].name):
        problems.append("the photo did not find its product first")
    if (refresh.replaced, refresh.embedded) != (1, 1) or index_points != len(samples):
        problems.append("the redrawn chart did not replace its point")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
