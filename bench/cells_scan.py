"""What first stage `cells` can reach at a size no HNSW is built for here: the cells searched exactly, or by lists.

    python -m bench.cells_scan --items 100000 --lists 4096 --nprobe 4 8 16

No index is built: `make bench-scale`'s synthetic catalog (`scale_data`, its seed and 48 bases) is generated in this
process, each item's cells pooled as `VisualIndex.vectors` pools them (`token_pooling.cells`, 2 x 2), and for
text-like queries (`scale_data.text_query`) it measures recall@10 against exact MaxSim over the stored vectors when
each query vector takes its `--hits` nearest cells
- exactly (a scan of every cell): what the pooling alone loses, the ceiling of any graph over the cells;
- through `--lists` k-means lists (an inverted file: `--nprobe` nearest lists scanned exactly per query vector): a
  first stage that needs no graph, only a k-means and an assignment, whose cost is the cells scanned per query vector.
Items score the sum over query vectors of their best cell found (`qdrant.rank_by_cells`, as the index ranks them), and
the best `--prefetch` items are reranked exactly. Memory: the cells in float16 (about 3 GB at 100,000 items).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from . import scale
from . import scale_data as data

SEED = scale.SEED


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def recall(scores: np.ndarray, found: list[list[tuple[int, float]]], prefetch: int) -> float:
    """recall@10 (`make bench-scale`'s: ties with the exact 10th count) of the exact rerank of the `prefetch` best
    items by `rank_by_cells` over the cells found per query vector."""
    from colqwen2_client.qdrant import rank_by_cells

    top = np.array([item for _, item in rank_by_cells(found)[:prefetch]], dtype=np.int64)
    reranked = top[np.argsort(-scores[top], kind="stable")]
    truth = scale._truth(scores[None, :], None, list(range(len(scores))))[0]
    return scale._recall(reranked.tolist(), truth)


def kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means (cosine), empty lists reseeded from random points."""
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iterations):
        assign = np.concatenate([np.argmax(x[s : s + 16384] @ centroids.T, 1) for s in range(0, len(x), 16384)])
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        empty = np.bincount(assign, minlength=k) == 0
        sums[empty] = x[rng.choice(len(x), int(empty.sum()))]
        centroids = _unit(sums)
    return centroids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cells_scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--cell-size", type=int, default=2)
    parser.add_argument("--hits", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--prefetch", type=int, nargs="+", default=[100, 200, 500])
    parser.add_argument("--lists", type=int, default=0, help="k-means lists (0: the exact scan only)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"))
    parser.add_argument("--bases", type=Path, help="bases.npz of a bench-scale workdir (else from --artifacts)")
    args = parser.parse_args(argv)

    from colqwen2_client.token_pooling import cells

    bases = data.load_bases(args.bases) if args.bases else data.real_bases(args.artifacts)
    offset = len(bases[0].prefix)
    rng = np.random.default_rng(1)
    sources = rng.choice(args.items, args.queries, replace=False)
    queries = [data.text_query(data.make_item(bases, int(i), SEED), bases, SEED) for i in sources]
    flat = np.concatenate(queries)
    bounds = np.cumsum([0] + [len(q) for q in queries])
    unit_queries = _unit(flat)
    exact = np.zeros((len(queries), args.items), np.float32)
    pooled, owners = [], []
    started = time.perf_counter()
    for i in range(args.items):
        item = data.make_item(bases, i, SEED)
        exact[:, i] = np.add.reduceat((flat @ data.as_stored(item.vectors).T).max(axis=1), bounds[:-1])
        c = cells(item.vectors, item.grid, offset, args.cell_size)
        pooled.append(_unit(c).astype(np.float16))
        owners.append(np.full(len(c), i, np.int32))
    all_cells, owner = np.concatenate(pooled), np.concatenate(owners)
    del pooled
    print(f"{args.items} items, {len(all_cells):,} cells of {args.cell_size} x {args.cell_size}, "
          f"{len(queries)} text-like queries: scored in {time.perf_counter() - started:.0f} s")  # fmt: skip

    def report(label: str, found_per_query: list[list[list[tuple[int, float]]]], scanned: float) -> None:
        rows = np.array([[recall(exact[q], f, p) for p in args.prefetch] for q, f in enumerate(found_per_query)])
        means, lows = rows.mean(0), rows.min(0)
        cols = ", ".join(f"{p}: {m:.3f} (min {lo:.1f})" for p, m, lo in zip(args.prefetch, means, lows, strict=True))
        print(f"{label}: recall@10 at prefetch {cols}; cells scanned per query vector {scanned:,.0f}", flush=True)

    hits_max = max(args.hits)
    # exact: every query vector's nearest cells, by one pass over all cells (a running top `hits_max` each)
    top_score = np.full((len(flat), hits_max), -np.inf, np.float32)
    top_cell = np.zeros((len(flat), hits_max), np.int64)
    for s in range(0, len(all_cells), 1 << 18):
        scores = unit_queries @ all_cells[s : s + (1 << 18)].astype(np.float32).T  # [query vectors, chunk]
        k = min(hits_max, scores.shape[1] - 1)
        part = np.argpartition(-scores, k, axis=1)[:, :hits_max]
        merged_score = np.concatenate([top_score, np.take_along_axis(scores, part, 1)], 1)
        merged_cell = np.concatenate([top_cell, part + s], 1)
        keep = np.argsort(-merged_score, axis=1)[:, :hits_max]
        top_score = np.take_along_axis(merged_score, keep, 1)
        top_cell = np.take_along_axis(merged_cell, keep, 1)
    for hits in args.hits:
        found = [[[(int(owner[c]), float(v)) for c, v in zip(top_cell[t, :hits], top_score[t, :hits], strict=True)]
                  for t in range(bounds[q], bounds[q + 1])] for q in range(len(queries))]  # fmt: skip
        report(f"exact scan, {hits} cells per query vector", found, len(all_cells))

    if args.lists:
        started = time.perf_counter()
        sample = all_cells[rng.choice(len(all_cells), min(len(all_cells), 50 * args.lists), replace=False)]
        centroids = kmeans(sample.astype(np.float32), args.lists, 8, rng)
        trained = time.perf_counter() - started
        lists = np.concatenate([np.argmax(all_cells[s : s + 65536].astype(np.float32) @ centroids.T, 1)
                                for s in range(0, len(all_cells), 65536)])  # fmt: skip
        order = np.argsort(lists, kind="stable")
        starts = np.searchsorted(lists[order], np.arange(args.lists + 1))
        sizes = np.diff(starts)
        print(f"{args.lists} lists: k-means on {len(sample):,} cells {trained:.0f} s, assignment "
              f"{time.perf_counter() - started - trained:.0f} s; cells per list mean {sizes.mean():.0f}, p50 "
              f"{np.median(sizes):.0f}, p99 {np.percentile(sizes, 99):.0f}, max {sizes.max()}")  # fmt: skip
        for nprobe in args.nprobe:
            for hits in args.hits:
                found, scanned = [], []
                for q in range(len(queries)):
                    per_query = []
                    for t in range(bounds[q], bounds[q + 1]):
                        probe = np.argsort(-(centroids @ unit_queries[t]))[:nprobe]
                        idx = np.concatenate([order[starts[p] : starts[p + 1]] for p in probe])
                        scores = all_cells[idx].astype(np.float32) @ unit_queries[t]
                        top = np.argsort(-scores)[:hits]
                        per_query.append([(int(owner[idx[j]]), float(scores[j])) for j in top])
                        scanned.append(len(idx))
                    found.append(per_query)
                report(f"{nprobe} of {args.lists} lists, {hits} cells per query vector", found, float(np.mean(scanned)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
