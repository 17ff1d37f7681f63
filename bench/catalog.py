"""Catalog indexing at scale: bulk speed against raw embedding, and recall of each first stage.

    python -m bench.catalog --artifacts artifacts/tiny --images 2000          # make bench-catalog
    python -m bench.catalog --artifacts artifacts/medium --images 96 --no-recall

Starts Triton on the export and writes a synthetic catalog of mixed sizes (Keepa charts at
Keepa's graph sizes, product photos square and portrait, tall banners, thumbnails) plus its JSONL
manifest, then:

1. Speed: the same images through `ColQwen2Client.embed_batch` (raw embedding: the SDK's
   pipelined requests, nothing stored), then through `colqwen2 index --manifest` (read, hash,
   embed, upsert into embedded Qdrant on disk, first stage `rows_cols`), then raw again; the
   ratio is indexing over the mean of the two raw passes.
2. Recall (on the indexed collection): for text queries and image queries (JPEG copies of
   catalog images), recall@10 of each two-stage search (`mean`, `rows_cols`) against exact MaxSim
   over the whole collection, for several prefetch limits, and the query latency of each in
   embedded Qdrant (brute force in Python: a server's HNSW is much faster, see the report).

Writes JSON and markdown to bench/results/catalog-<artifacts>.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from colqwen2_client import ColQwen2Client
from colqwen2_client.catalog import read_manifest
from colqwen2_client.qdrant import IndexSettings, VisualIndex, open_qdrant
from PIL import Image

from export.sample_images import QUERIES, keepa_chart, product_image
from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer

# (kind, width, height, share of the catalog): charts at Keepa's sizes, photos, banners, thumbnails
MIX = (
    ("keepa_chart", 500, 200, 0.3),
    ("keepa_chart", 1000, 400, 0.15),
    ("keepa_chart", 800, 500, 0.05),
    ("product_image", 600, 600, 0.2),
    ("product_image", 1000, 1200, 0.05),
    ("product_image", 300, 900, 0.05),
    ("product_image", 160, 160, 0.2),
)
LIMIT = 10
PREFETCH = (10, 20, 50, 100, 200)


def plan(count: int) -> list[tuple[str, int, int]]:
    """`count` (kind, width, height), interleaved in the proportions of MIX."""
    out: list[tuple[str, int, int]] = []
    credit = [0.0] * len(MIX)
    for _ in range(count):
        credit = [c + share for c, (*_, share) in zip(credit, MIX, strict=True)]
        pick = int(np.argmax(credit))
        credit[pick] -= 1
        out.append(MIX[pick][:3])
    return out


def write_catalog(folder: Path, count: int) -> Path:
    """Images and their manifest (cached: the same count writes the same files)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"catalog-{count}.jsonl"
    if manifest.exists():
        return manifest
    lines = []
    for i, (kind, width, height) in enumerate(plan(count)):
        chart = kind == "keepa_chart"
        name = f"{i:05d}_{kind}_{width}x{height}.{'png' if chart else 'jpg'}"
        if not (folder / name).exists():
            image = keepa_chart(10_000 + i, width, height) if chart else product_image(10_000 + i, width, height)
            image.save(folder / name, "PNG" if chart else "JPEG", quality=90)
        category = ("toys", "electronics", "kitchen", "garden", "books")[i % 5]
        marketplace = ("DE", "US", "UK", "FR")[i % 4]
        lines.append({"asin": f"B0{i:08d}", "marketplace": marketplace, "kind": kind, "category": category,
                      "path": name})  # fmt: skip
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def raw_throughput(client: ColQwen2Client, data: list[bytes]) -> float:
    started = time.perf_counter()
    results = client.embed_batch(data, return_exceptions=True)
    seconds = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed to embed: {failed[0]}")
    return len(data) / seconds


def exact_top(query: np.ndarray, ids: list[str], docs: list[np.ndarray], k: int) -> list[str]:
    scores = np.array([(query @ d.T).max(axis=1).sum() for d in docs])
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def recall_table(index: VisualIndex, queries: dict[str, list], limits: tuple[int, ...]) -> list[dict]:
    stored = index.stored_vectors(list(index.store.ids(index.name)))  # every point's vectors as stored
    ids, docs = list(stored), list(stored.values())
    rows = []
    for kind, embeddings in queries.items():
        truth = [exact_top(q.vectors, ids, docs, LIMIT) for q in embeddings]
        configs = [("none", 0)] + [(stage, n) for stage in ("mean", "rows_cols") for n in limits]
        for stage, prefetch in configs:
            recalls, latencies = [], []
            for query, expected in zip(embeddings, truth, strict=True):
                started = time.perf_counter()
                hits = index.search_embedding(query, LIMIT, prefetch_limit=prefetch or None, first_stage=stage)
                latencies.append(time.perf_counter() - started)
                recalls.append(len({h.id for h in hits} & set(expected)) / LIMIT)
            rows.append({
                "queries": kind, "first_stage": stage, "prefetch": prefetch or None, "n": len(embeddings),
                "recall_at_10": round(float(np.mean(recalls)), 4), "min_recall": round(float(np.min(recalls)), 2),
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                "p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(report: dict) -> str:
    speed = report["speed"]
    lines = [
        f"Catalog bench: `{report['command']}`, {report['date']}, {report['machine']}, checkpoint "
        f"`{report['checkpoint']}` ({report['parameters_m']} M parameters"
        f"{', random weights' if report['random'] else ''}).",
        "",
        f"Catalog: {report['images']} images ({report['mix']}).",
        "",
        "| pass | images/s |",
        "|---|---|",
        f"| raw embedding (`embed_batch`), before | {speed['raw_before']:.2f} |",
        "| indexing (`VisualIndex.index`: read, hash, embed, upsert to embedded Qdrant on disk) | "
        f"{speed['index']:.2f} |",
        f"| raw embedding, after | {speed['raw_after']:.2f} |",
        f"| **indexing / raw** | **{speed['ratio'] * 100:.1f} %** |",
        "",
    ]
    if report.get("recall"):
        lines += [
            f"Recall@{LIMIT} against exact MaxSim over all {report['points']} points, and query latency in embedded "
            "Qdrant (brute force in Python, one query at a time):",
            "",
            "| queries | first stage | prefetch | recall@10 | worst query | p50 ms | p95 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["recall"]:
            lines.append(
                f"| {r['queries']} ({r['n']}) | {r['first_stage']} | {r['prefetch'] or 'all'} "
                f"| {r['recall_at_10']:.3f} | {r['min_recall']:.1f} | {r['p50_ms']} | {r['p95_ms']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"))
    parser.add_argument("--images", type=int, default=2000, help="catalog size (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=40, help="text and image queries each (default: %(default)s)")
    parser.add_argument("--recall", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-catalog"))
    parser.add_argument("--out", type=Path, default=None, help="report prefix (default bench/results/catalog-<name>)")
    args = parser.parse_args(argv)
    info = json.loads((args.artifacts / "manifest.json").read_text())
    manifest = write_catalog(args.workdir / "images", args.images)
    items = read_manifest(manifest).items
    data = [item.read() for item in items]
    repository = render(RenderOptions(args.artifacts, args.workdir / f"repo-{args.artifacts.name}"))
    server = TritonServer.on_free_ports(repository)
    store = args.workdir / f"qdrant-{args.artifacts.name}-{args.images}"
    with open(args.workdir / "tritonserver.log", "w") as log, server:
        server.start(log)
        server.wait_ready(600)
        with ColQwen2Client(f"grpc://{server.grpc_url}") as client:
            client.embed_batch(data[:32])  # warm up connections and arenas
            before = raw_throughput(client, data)
            print(f"raw embedding: {before:.2f} images/s", flush=True)

            shutil.rmtree(store, ignore_errors=True)
            index = VisualIndex(client, open_qdrant(store), IndexSettings(first_stage="rows_cols"))
            report = index.index(items)
            if report.failed or report.new != len(items):
                raise RuntimeError(f"indexing failed: {report.summary()} {report.failed[:3]}")
            indexing = report.new / report.seconds
            print(f"indexing: {indexing:.2f} images/s", flush=True)
            after = raw_throughput(client, data)
            print(f"raw embedding again: {after:.2f} images/s", flush=True)
            recall = []
            if args.recall:
                texts = [client.embed_query(q) for q in (QUERIES * (args.queries // len(QUERIES) + 1))[: args.queries]]
                step = max(len(data) // args.queries, 1)
                copies = []
                for d in data[::step][: args.queries]:
                    buffer = io.BytesIO()
                    Image.open(io.BytesIO(d)).convert("RGB").save(buffer, "JPEG", quality=50)
                    copies.append(buffer.getvalue())
                queries = {"text": texts, "image (JPEG q50 copies)": client.embed_batch(copies)}
                recall = recall_table(index, queries, PREFETCH)
    mix = ", ".join(f"{int(share * 100)} % {kind} {w}x{h}" for kind, w, h, share in MIX)
    result = {
        "command": "python -m bench.catalog " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads",
        "checkpoint": info["checkpoint"],
        "parameters_m": round(info["parameters"] / 1e6, 1),
        "random": bool(info.get("random_weights")),
        "images": len(items),
        "points": index.count() if args.recall else report.new,
        "mix": mix,
        "speed": {
            "raw_before": before,
            "index": indexing,
            "raw_after": after,
            "ratio": indexing / ((before + after) / 2),
            "index_summary": report.summary(),
        },
        "recall": recall,
    }
    out = args.out or Path("bench/results") / f"catalog-{args.artifacts.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
