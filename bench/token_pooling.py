"""Token pooling at index time: storage saved against ranking changes, on the demo's sample set.

    python -m bench.token_pooling --artifacts artifacts/tiny     # what `make bench-pooling` runs

Starts Triton on the export, embeds the demo samples once, then for each pool factor indexes
them into an in-memory Qdrant (hierarchical pooling of each image's vectors, as colpali-engine
does) and ranks every image for text queries and for image queries (JPEG q50 copies of the
samples), with every point reranked by MaxSim. Compares each ranking with the unpooled one:
top-1 agreement, top-5 overlap and Spearman correlation of the full ranking. Writes JSON and a
markdown table to bench/results/.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from colqwen2_client import ColQwen2Client
from colqwen2_client.catalog import point_id, sha256_hex
from colqwen2_client.qdrant import IndexSettings, VisualIndex, open_qdrant
from PIL import Image
from scipy.stats import spearmanr

from demo.samples import write_samples
from export.sample_images import QUERIES
from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer

from .timing import cpu_name

ROOT = Path(__file__).resolve().parent.parent


def rankings(index: VisualIndex, queries, ids: list[str]) -> list[list[str]]:
    return [[h.id for h in index.search_embedding(q, limit=len(ids))] for q in queries]


def compare(base: list[list[str]], other: list[list[str]]) -> dict[str, float]:
    top1 = np.mean([b[0] == o[0] for b, o in zip(base, other, strict=True)])
    top5 = np.mean([len(set(b[:5]) & set(o[:5])) / 5 for b, o in zip(base, other, strict=True)])
    rho = np.mean(
        [
            spearmanr([b.index(i) for i in b], [o.index(i) for i in b]).statistic
            for b, o in zip(base, other, strict=True)
        ]
    )
    return {"top1_agreement": float(top1), "top5_overlap": float(top5), "spearman": float(rho)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"))
    parser.add_argument("--factors", default="1,2,3,4,6")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-pooling"))
    args = parser.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    samples = write_samples(args.workdir / "samples")
    repository = render(RenderOptions(args.artifacts, args.workdir / "model_repository"))
    server = TritonServer.on_free_ports(repository)
    with open(args.workdir / "tritonserver.log", "w") as log, server:
        server.start(log)
        server.wait_ready(300)
        with ColQwen2Client(f"grpc://{server.grpc_url}") as client:
            data = [p.read_bytes() for p in samples]
            text_queries = [client.embed_query(q) for q in QUERIES]
            copies = []
            for d in data[::4]:
                buffer = io.BytesIO()
                Image.open(io.BytesIO(d)).convert("RGB").save(buffer, "JPEG", quality=50)
                copies.append(buffer.getvalue())
            image_queries = client.embed_batch(copies)
            ids = [point_id(f"sha256:{sha256_hex(d)}") for d in data]  # bytes without a key: content-addressed
            rows, base = [], {}
            for factor in factors:
                index = VisualIndex(
                    client, open_qdrant(":memory:"), IndexSettings(pool_factor=factor, prefetch_limit=1000)
                )
                report = index.index(data)
                ranked = {"text": rankings(index, text_queries, ids), "image": rankings(index, image_queries, ids)}
                base = base or ranked
                row = {
                    "pool_factor": factor,
                    "stored_vectors": report.stored_vectors,
                    "raw_vectors": report.raw_vectors,
                }
                row["storage"] = report.stored_vectors / report.raw_vectors
                for kind in ("text", "image"):
                    row[kind] = compare(base[kind], ranked[kind])
                row["image_query_finds_original"] = float(
                    np.mean([r[0] == ids[i * 4] for i, r in enumerate(ranked["image"])])
                )
                rows.append(row)
    result = {
        "command": f"python -m bench.token_pooling --artifacts {args.artifacts} --factors {args.factors}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "python": platform.python_version()},
        "checkpoint": manifest["checkpoint"],
        "parameters": manifest["parameters"],
        "random_weights": manifest.get("random_weights", False),
        "images": len(samples),
        "text_queries": len(text_queries),
        "image_queries": len(image_queries),
        "rows": rows,
    }
    out = ROOT / "bench/results" / f"token-pooling-{Path(manifest['checkpoint']).name}.json"
    out.write_text(json.dumps(result, indent=2))
    lines = [
        f"Token pooling on {len(samples)} demo images ({result['checkpoint']}, {result['parameters'] / 1e6:.1f} M "
        f"parameters{', random weights' if result['random_weights'] else ''}), {len(text_queries)} text and "
        f"{len(image_queries)} image queries, every point reranked. `{result['command']}`, {result['date']}.",
        "",
        "| pool factor | stored vectors | storage | text top-1 = unpooled | text top-5 overlap | text Spearman "
        "| image top-1 = unpooled | image Spearman | image query finds its original |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pool_factor']} | {r['stored_vectors']} of {r['raw_vectors']} | {r['storage']:.1%} "
            f"| {r['text']['top1_agreement']:.3f} | {r['text']['top5_overlap']:.3f} | {r['text']['spearman']:.3f} "
            f"| {r['image']['top1_agreement']:.3f} | {r['image']['spearman']:.3f} "
            f"| {r['image_query_finds_original']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
