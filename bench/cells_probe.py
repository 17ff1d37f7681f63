"""Where first stage `cells` loses text-query recall: the pooling itself, or the HNSW search over the cells.

    python -m bench.cells_probe --items 10000 --bases 48 --cell-size 3 --payload-m 0

Builds `make bench-scale`'s synthetic catalog (`scale_data`, the same seed and bases) into a fresh index with the
cells first stage, then takes text-like queries and measures, for each way of searching the cells, the share of the
exact top 10 (brute-force MaxSim over the stored vectors) that the candidates hold (`recall`, prefetch 200, the
rerank being exact): an exact scan of the cells (the loss of the pooling alone) against the HNSW at its default and
larger `hnsw_ef`. `--bases` below 48 puts more families on each base: 2,000 items on 1 base hold 167 families per
base, as 100,000 items on 48 do (the density at which the 100,000-item record lost text recall).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import scale
from . import scale_data as data

SEED = scale.SEED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cells_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--bases", type=int, default=48, help="real embeddings the items perturb (default 48)")
    parser.add_argument("--cell-size", type=int, default=2)
    parser.add_argument("--payload-m", type=int, default=16, help="HNSW payload subgraph links (0: none)")
    parser.add_argument("--m", type=int, default=0, help="HNSW links per node (0: the store's default)")
    parser.add_argument("--ef-construct", type=int, default=0)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--cell-hits", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"))
    parser.add_argument("--workdir", type=Path, default=Path("build/cells-probe"))
    args = parser.parse_args(argv)

    import colqwen2_client.qdrant as visual
    import colqwen2_client.stores as stores
    from colqwen2_client.catalog import point_id
    from colqwen2_client.qdrant import CELL, ITEM, rank_by_cells

    visual.CELL_SIZE, stores.HNSW_PAYLOAD_M = args.cell_size, args.payload_m
    stores.HNSW_M = args.m or stores.HNSW_M
    stores.HNSW_EF_CONSTRUCT = args.ef_construct or stores.HNSW_EF_CONSTRUCT
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    bases = data.real_bases(args.artifacts)[: args.bases]
    data.save_bases(bases, args.workdir / "bases.npz")
    index = scale._index(args.workdir / "edge", args.items, create=True, first_stage="cells")
    started, batch, items = time.perf_counter(), [], []
    for i in range(args.items):
        items.append(data.make_item(bases, i, SEED))
        batch.append(scale._record(index, items[-1]))
        if len(batch) == 64 or i == args.items - 1:
            index.upsert(batch, wait=i == args.items - 1)
            batch = []
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    index.optimize()
    optimize_s = time.perf_counter() - started

    docs = [data.as_stored(item.vectors) for item in items]
    flat, owner = np.concatenate(docs), np.repeat(np.arange(args.items), [len(d) for d in docs])
    keys = [point_id(data.make_key(i, SEED)) for i in range(args.items)]
    sources = np.random.default_rng(1).choice(args.items, args.queries, replace=False)
    queries = [data.text_query(items[i], bases, SEED) for i in sources]
    truths = []
    for q in queries:
        best = np.full((args.items, len(q)), -np.inf, np.float32)
        np.maximum.at(best, owner, flat @ q.T)
        scores = best.sum(1)
        tenth = np.sort(scores)[-scale.LIMIT]
        truths.append({keys[i] for i in np.flatnonzero(scores >= tenth - scale.TIE * abs(tenth))})

    edge = index.store._edge
    shard = index.store._shard(index.cells_name)

    def candidates(q: np.ndarray, params) -> list[str]:
        """As `VisualIndex.cell_candidates`, with the search parameters given."""
        found = []
        for vector in q:
            request = edge.QueryRequest(limit=args.cell_hits, query=edge.Query.Nearest(vector.tolist(), using=CELL),
                                        params=params, with_payload=True)  # fmt: skip
            found.append([(str(p.payload[ITEM]), p.score) for p in shard.query(request)])
        return [k for _, k in rank_by_cells(found)[: args.prefetch]]

    searches = [("exact", edge.SearchParams(exact=True)), ("hnsw, default ef", None)]
    searches += [(f"hnsw, ef {ef}", edge.SearchParams(hnsw_ef=ef)) for ef in (128, 512, 1024)]
    rows = []
    for label, params in searches:
        recalls, latencies = [], []
        for q, truth in zip(queries, truths, strict=True):
            t = time.perf_counter()
            found = candidates(q, params)
            latencies.append(time.perf_counter() - t)
            recalls.append(min(1.0, len(set(found) & truth) / scale.LIMIT))
        rows.append({"search": label, "recall": round(float(np.mean(recalls)), 3),
                     "p50_ms": round(float(np.median(latencies)) * 1000, 1)})  # fmt: skip
        print(f"{label}: recall {rows[-1]['recall']:.3f}, first stage p50 {rows[-1]['p50_ms']} ms", flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("artifacts", "workdir")}
    out = {"settings": settings, "cells": index.store.count(index.cells_name), "upsert_s": round(upsert_s, 1),
           "optimize_s": round(optimize_s, 1), "rows": rows}  # fmt: skip
    print(json.dumps(out), file=sys.stderr)
    index.close()
    shutil.rmtree(args.workdir / "edge", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
