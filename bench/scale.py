"""Catalog search at scale (`make bench-scale`): Qdrant's engine in process at 10,000 and 100,000 items.

    python -m bench.scale --artifacts artifacts/tiny --items 10000 100000

For each size, on a synthetic catalog anchored on the served model's embeddings (`bench.scale_data`):
1. build: items generated, encoded into every first stage's vectors (`VisualIndex.vectors`: mean, layout,
   MUVERA up to MUVERA_MAX items, and the collection's first stage, `--first-stage`: cells, the default, in
   their companion collection, or rows/cols) and upserted (qdrant-edge, float16 multivector with int8
   scalar quantization, no graph), then `optimize()` (HNSW over each first stage, quantization): time and
   rate of each step, peak RSS, bytes on disk per item. It runs in its own process, so its peak is its own.
2. ground truth: exact MaxSim (float32 GEMM over the stored float16 vectors) of every query against every
   item, items regenerated in chunks.
3. search (its own process, on the built folder): for image queries (degraded copies of items), text-like
   queries (a few of an item's tokens plus noise) and random queries (a stress row: their exact top 10 is a
   near tie), recall@10 against the exact top 10 and latency p50/p95/p99 of the search alone, for each first
   stage and prefetch size, with and without filters, with quantization on and off; then 8 concurrent
   clients; RSS and PSS of the serving process.
4. refresh: 1 % of the items redrawn and 0.1 % new, written to the built index (not optimized: they wait in
   the appendable segment, searched exactly): wall time, then search latency and recall while they wait, then
   the optimize that indexes them.
5. qdrant-client's local mode (the previous default) at the size it can hold (--local-max): build, latency,
   recall, RSS, beside the rest.

Writes bench/results/scale-<items>.{json,md}. The query's own embedding is not in these latencies: the
serving records (`make bench`) have it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import scale_data as data

LIMIT = 10
SEED = 20261206
WHERE = {"chart": {"kind": "keepa_chart"}, "narrow": {"kind": "product_image", "marketplace": "DE"}}
MUVERA_MAX = 20_000  # a 2048-dim HNSW costs ~16x the mean's to build: measured at 10,000, not at 100,000
TIE = 1e-3  # exact scores within 0.1 % of the 10th count as the top 10 (float16 storage moves scores ~1e-4)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pss_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _stages(items: int, first_stage: str) -> list[str]:
    """The first stages built: the mean, the collection's first stage, MUVERA up to MUVERA_MAX items."""
    stages = ["mean"] + ([first_stage] if first_stage in ("rows_cols", "cells") else [])
    return stages + (["muvera"] if items <= MUVERA_MAX else [])


def _query_stages(kind: str, items: int, first_stage: str) -> list[str]:
    """The first stages measured for a query kind: `layout` is an image query's (it needs the query's grid)."""
    stages = _stages(items, first_stage)
    # cells: one search per query vector, hundreds for an image (seconds): images take layout
    return ["layout"] + [s for s in stages if s != "cells"] if kind == "image" else stages


def _index(folder: Path, items: int, create: bool, first_stage: str):
    """A VisualIndex on `folder` whose collection carries every first stage measured at this size."""
    from colqwen2_client.qdrant import FDE, IndexSettings, VisualIndex, open_qdrant
    from colqwen2_client.stores import DENSE, CollectionSpec, VectorSpec

    settings = IndexSettings(first_stage=first_stage)  # otherwise the defaults
    offset = len(data.load_bases(folder.parent / "bases.npz")[0].prefix)  # the prompt tokens before the visual ones
    index = VisualIndex(None, open_qdrant(folder), settings, visual_token_offset=offset)
    if create and not index.exists():
        spec = index.spec()
        vectors = dict(spec.vectors)
        if "muvera" in _stages(items, first_stage):
            vectors[FDE] = VectorSpec(index.muvera.fde_dim, DENSE, distance="dot")
        if first_stage == "cells":
            index.store.create(index.cells_name, index.cells_spec())
        index.store.create(index.name, CollectionSpec(vectors, spec.filter_fields, spec.metadata))
    return index


def _record(index, item):
    from colqwen2_client.catalog import point_id
    from colqwen2_client.qdrant import FDE
    from colqwen2_client.stores import Record

    # every vector the index writes itself: pooled, colqwen2, layout, and the first stage's (cells or rows/cols)
    vectors = index.vectors(_embedding(item.vectors, item.grid), item.key)
    if FDE in index.store.metadata(index.name)["vectors"]:
        vectors[FDE] = index.muvera.encode_document(item.vectors)
    return Record(point_id(item.key), item.payload, vectors)


def build(args) -> dict:
    """Step 1, in its own process."""
    bases = data.load_bases(args.workdir / "bases.npz")
    folder = args.workdir / f"edge-{args.items}"
    shutil.rmtree(folder, ignore_errors=True)
    index = _index(folder, args.items, create=True, first_stage=args.first_stage)
    encode = write = 0.0
    started = time.perf_counter()
    batch: list = []
    vectors = 0
    for i in range(args.items):
        t = time.perf_counter()
        item = data.make_item(bases, i, SEED)
        batch.append(_record(index, item))
        vectors += len(item.vectors)
        encode += time.perf_counter() - t
        if len(batch) == 64 or i == args.items - 1:
            t = time.perf_counter()
            # as VisualIndex.index writes: batches of 64, waiting (a flush, which trims the WAL) every 8th
            index.upsert(batch, wait=(i == args.items - 1 or (i + 1) % 512 == 0))
            write += time.perf_counter() - t
            batch = []
        if (i + 1) % max(1, args.items // 20) == 0:
            print(f"  built {i + 1}/{args.items} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    t = time.perf_counter()
    index.optimize()
    optimize = time.perf_counter() - t
    segments = index.store.segments(index.name)
    collections = index.collections()
    cell_points = index.store.count(index.cells_name) if len(collections) > 1 else 0
    index.close()
    return {
        "items": args.items, "vectors": vectors, "vectors_per_item": round(vectors / args.items, 1),
        "stages": _stages(args.items, args.first_stage), "generate_encode_s": round(encode, 1),
        "upsert_s": round(write, 1),
        "optimize_s": round(optimize, 1), "segments": segments,
        "total_s": round(time.perf_counter() - started, 1),
        "items_per_s": round(args.items / (time.perf_counter() - started), 1),
        "peak_rss_mb": round(_rss_mb()), "disk_bytes": _du(folder),
        "disk_bytes_per_item": round(_du(folder) / args.items),
        "wal_bytes": sum(_du(folder / name / "wal") for name in collections), "cell_points": cell_points,
    }  # fmt: skip


def queries(bases, items: int, counts: dict[str, int]) -> dict[str, list]:
    picks = {kind: _sources(items, counts[kind], salt) for kind, salt in (("image", 9), ("text", 10))}
    image = [data.image_query(data.make_item(bases, i, SEED), SEED) for i in picks["image"]]
    text = [data.text_query(data.make_item(bases, i, SEED), bases, SEED) for i in picks["text"]]
    rand = [data.random_query(SEED, i) for i in range(counts["random"])]
    return {"image": image, "text": text, "random": rand, "sources": picks}


def _sources(items: int, count: int, salt: int) -> list[int]:
    """The catalog items `count` queries are drawn from: a third from each filter's items (a user who filters
    on charts searches with a chart: a query whose source the filter excludes has a near tie for its exact top
    10, like a random query), the rest from all. Each query counts under no filter and under every filter its
    source passes."""
    rng = np.random.default_rng([SEED, salt, items])
    payloads = _payloads(items)
    picked: list[int] = []
    for where in WHERE.values():
        subset = [i for i, p in enumerate(payloads) if all(p[k] == v for k, v in where.items()) and i not in picked]
        picked += [int(i) for i in rng.choice(subset, size=count // 3, replace=False)]
    taken = set(picked)
    rest = [i for i in range(items) if i not in taken]
    return picked + [int(i) for i in rng.choice(rest, size=count - len(picked), replace=False)]


def _embedding(q: np.ndarray, grid: tuple[int, int] | None = None):
    """A query as VisualIndex takes it: an image query carries its grid (as the server returns it)."""
    from colqwen2_client.types import Embedding

    pooled = q.mean(0)
    return Embedding(q, (pooled / np.linalg.norm(pooled)).astype(np.float32), grid=grid)


def exact_scores(bases, items: list[int], query_sets: dict[str, list], versions: dict[int, int] | None = None):
    """MaxSim of every query against the stored (float16) vectors of `items`: {kind: [n_queries, len(items)]}."""
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    kinds = ["image", "text", "random"]
    flat = np.concatenate([q for k in kinds for q in query_sets[k]])
    bounds = np.cumsum([0] + [len(q) for k in kinds for q in query_sets[k]])
    out = np.zeros((len(bounds) - 1, len(items)), dtype=np.float64)
    versions = versions or {}
    Q = torch.from_numpy(flat)
    chunk = 256
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        docs = [data.as_stored(data.make_item(bases, i, SEED, versions.get(i, 0)).vectors) for i in part]
        offsets = np.cumsum([0] + [len(d) for d in docs])[:-1]
        D = torch.from_numpy(np.concatenate(docs))
        for q0 in range(0, len(flat), 2048):
            S = (Q[q0 : q0 + 2048] @ D.T).numpy()
            best = np.maximum.reduceat(S, offsets, axis=1)  # [query tokens, items]: each token's best match
            rows = np.arange(q0, min(q0 + 2048, len(flat)))
            owner = np.searchsorted(bounds, rows, side="right") - 1
            np.add.at(out, (owner[:, None], np.arange(start, start + len(part))[None, :]), best)
    sizes = {k: len(query_sets[k]) for k in kinds}
    split = np.cumsum([0] + [sizes[k] for k in kinds])
    return {k: out[split[i] : split[i + 1]] for i, k in enumerate(kinds)}


def _payloads(items: int) -> list[dict]:
    return [{"kind": data.item_size(i, SEED)[0], "marketplace": data.marketplace(i)} for i in range(items)]


def _truth(scores: np.ndarray, allowed: np.ndarray | None, keys: list[str]) -> list[set[str]]:
    """The exact top 10 of each query (within `allowed`): everything scoring at least the 10th (ties count)."""
    tops = []
    for row in scores:
        masked = np.where(allowed, row, -np.inf) if allowed is not None else row
        tenth = np.sort(masked)[-LIMIT]
        tops.append({keys[i] for i in np.flatnonzero(masked >= tenth - TIE * abs(tenth))})
    return tops


def _recall(hits: list[str], truth: set[str]) -> float:
    return min(1.0, len(set(hits[:LIMIT]) & truth) / LIMIT)


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2)


class Searches:
    """Step 3's state: the built index, the queries, their exact answers and the filters' masks."""

    def __init__(self, args) -> None:
        from colqwen2_client.catalog import point_id

        self.args = args
        t = time.perf_counter()
        self.index = _index(args.workdir / f"edge-{args.items}", args.items, create=False, first_stage=args.first_stage)
        self.index.count()
        self.load_s = time.perf_counter() - t
        with np.load(args.workdir / f"queries-{args.items}.npz") as f:
            self.sets = {k: _unpack(f, k) for k in ("image", "text", "random")}
            self.scores = {k: f[f"scores_{k}"] for k in ("image", "text", "random")}
            self.sources = {k: [int(i) for i in f[f"sources_{k}"]] for k in ("image", "text")}
        self.keys = [point_id(data.make_key(i, SEED)) for i in range(args.items)]
        payloads = _payloads(args.items)
        passes = {name: [all(p[k] == v for k, v in where.items()) for p in payloads] for name, where in WHERE.items()}
        self.masks = {"none": None} | {name: np.array(mask) for name, mask in passes.items()}
        self.offset = self.index.visual_token_offset()
        self.grids = {"image": [data.item_grid(*data.item_size(i, SEED)[1:]) for i in self.sources["image"]]}

    def selected(self, kind: str, where: str) -> list[int]:
        """The queries of `kind` measured under filter `where`: those whose source passes it (random: all)."""
        if kind == "random" or where == "none":
            return list(range(len(self.sets[kind])))
        return [j for j, i in enumerate(self.sources[kind]) if self.masks[where][i]]

    def truth(self, kind: str, where: str, chosen: list[int]) -> list[set[str]]:
        return _truth(self.scores[kind][chosen], self.masks[where], self.keys)

    def stages(self, stage: str, q: np.ndarray, prefetch: int, grid=None) -> list:
        from colqwen2_client.qdrant import COLS, FDE, LAYOUT, POOLED, ROWS
        from colqwen2_client.stores import Stage
        from colqwen2_client.token_pooling import layout

        if stage == "layout":
            return [Stage(LAYOUT, layout(q, grid, self.offset), prefetch)]
        if stage == "mean":
            pooled = q.mean(0)
            return [Stage(POOLED, pooled / np.linalg.norm(pooled), prefetch)]
        if stage == "muvera":
            return [Stage(FDE, self.index.muvera.encode_query(q), prefetch)]
        if stage == "rows_cols":
            return [Stage(ROWS, q, prefetch), Stage(COLS, q, prefetch)]
        return []

    def run(self, q, stage, prefetch, where, quantized, grid=None) -> tuple[float, list[str]]:
        """One query through one first stage and the rerank: (seconds, ids)."""
        from colqwen2_client.qdrant import MULTI

        stages = self.stages(stage, q, prefetch, grid)
        t = time.perf_counter()
        ids = None
        if stage == "cells":  # the candidates come as ids, from the cells collection
            ids = [h.id for h in self.index.cell_candidates(_embedding(q), prefetch, WHERE.get(where))]
        found = self.index.store.query(self.index.name, q, MULTI, LIMIT, WHERE.get(where), stages, quantized, ids)
        return time.perf_counter() - t, [p.id for p in found]

    def plan(self, kind: str, where: str) -> list[tuple[str, int, str]]:
        """(first stage, prefetch, quantization) measured for `kind` under `where`."""
        args = self.args
        sizes = args.image_prefetch if kind == "image" else args.prefetch
        configs = [(stage, n) for stage in _query_stages(kind, args.items, args.first_stage) for n in sizes]
        plan = [(s, n, "rescore") for s, n in configs]
        if where == "none":
            plan += [(s, n, "ignore") for s, n in configs if n == sizes[len(sizes) // 2]]
        if kind == "random":
            return [p for p in plan if where == "none" and p[2] == "rescore"]
        if kind == "image":  # rows_cols: an image's hundreds of tokens against each HNSW node's rows/cols: seconds
            plan = [(s, n, x) for s, n, x in plan if s not in ("rows_cols", "muvera") or n <= args.image_prefetch[0]]
            plan = [p for p in plan if p[0] != "rows_cols" or args.items <= MUVERA_MAX]
        return plan

    def matrix(self) -> list[dict]:
        """Every query kind x filter x first stage x prefetch x quantization: recall@10 and latency."""
        rows = []
        for kind in ("image", "text", "random"):
            for where in self.masks:
                chosen = self.selected(kind, where)
                qs = [self.sets[kind][j] for j in chosen]
                qgrids = [self.grids[kind][j] for j in chosen] if kind == "image" else [None] * len(qs)
                truth = self.truth(kind, where, chosen)
                for stage, prefetch, quantized in self.plan(kind, where):
                    lat, rec = [], []
                    for q, g, expected in zip(qs, qgrids, truth, strict=True):
                        self.run(q, stage, prefetch, where, quantized, g)  # warm: the first call maps the files
                        dt, ids = self.run(q, stage, prefetch, where, quantized, g)
                        lat.append(dt)
                        rec.append(_recall(ids, expected))
                    rows.append({
                        "queries": kind, "where": where, "first_stage": stage, "prefetch": prefetch,
                        "quantization": "int8 rescored" if quantized == "rescore" else "off (float16)",
                        "n": len(qs), **_stats(lat, rec),
                    })  # fmt: skip
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        return rows

    def defaults(self) -> dict[str, dict]:
        """The index's own search with its defaults (text: the collection's first stage; images: layout), as a
        user calls it: latency and recall per query kind, with and without a filter."""
        own = {}
        for kind in ("image", "text"):
            for where in self.masks:
                chosen = self.selected(kind, where)
                lat, rec = [], []
                for j, expected in zip(chosen, self.truth(kind, where, chosen), strict=True):
                    e = _embedding(self.sets[kind][j], self.grids[kind][j] if kind == "image" else None)
                    self.index.search_embedding(e, LIMIT, WHERE.get(where))
                    t = time.perf_counter()
                    hits = self.index.search_embedding(e, LIMIT, WHERE.get(where))
                    lat.append(time.perf_counter() - t)
                    rec.append(_recall([h.id for h in hits], expected))
                route = "/".join(map(str, self.index.route(e)))
                own[f"{kind}/{where}"] = {"route": route, "n": len(lat), **_stats(lat, rec)}
                print(json.dumps({"default": f"{kind}/{where}", **own[f"{kind}/{where}"]}), file=sys.stderr, flush=True)
        return own

    def concurrent(self, clients: int = 8) -> dict:
        """`clients` threads of image queries on the default route at once."""
        lat: list[float] = []
        lock = threading.Lock()
        default = ("layout", self.index.settings.long_query_prefetch, "none", "ignore")
        images, grids = self.sets["image"], self.grids["image"]

        def client(worker: int) -> None:
            for j in range(self.args.concurrent_rounds):
                k = (worker + j) % len(images)
                dt, _ = self.run(images[k], *default, grids[k])
                with lock:
                    lat.append(dt)

        t = time.perf_counter()
        threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        return {"n": len(lat), "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99),
                "queries_per_s": round(len(lat) / wall, 1)}  # fmt: skip


def _stats(lat: list[float], rec: list[float]) -> dict:
    return {"recall_at_10": round(float(np.mean(rec)), 4), "min_recall": round(min(rec), 2),
            "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99)}  # fmt: skip


def search(args) -> dict:
    """Step 3, in its own process: the query matrix on the built folder."""
    s = Searches(args)
    out = {
        "load_s": round(s.load_s, 2), "rows": s.matrix(), "defaults": s.defaults(), "concurrent8": s.concurrent(8),
        "queries_per_filter": {f"{k}/{w}": len(s.selected(k, w)) for k in ("image", "text") for w in s.masks},
        "rss_mb": round(_current_rss_mb()), "pss_mb": round(_pss_mb()), "peak_rss_mb": round(_rss_mb()),
    }  # fmt: skip
    s.index.close()
    return out


def refresh(args) -> dict:
    """Step 4, in its own process: 1 % redrawn and 0.1 % new, searched while they wait, then optimized."""
    from colqwen2_client.catalog import point_id

    bases = data.load_bases(args.workdir / "bases.npz")
    folder = args.workdir / f"edge-{args.items}"
    index = _index(folder, args.items, create=False, first_stage=args.first_stage)
    plan = json.loads((args.workdir / f"refresh-{args.items}.json").read_text())
    t = time.perf_counter()
    batch = []
    for i in plan["redrawn"] + plan["new"]:
        batch.append(_record(index, data.make_item(bases, i, SEED, plan["versions"].get(str(i), 0))))
        if len(batch) == 64:
            index.upsert(batch, wait=False)
            batch = []
    index.upsert(batch, wait=True)
    write_s = time.perf_counter() - t
    waiting = len(plan["redrawn"]) + len(plan["new"])
    with np.load(args.workdir / f"queries-{args.items}.npz") as f:
        sets = {k: _unpack(f, k) for k in ("image", "text")}
        scores = {k: f[f"refreshed_{k}"] for k in ("image", "text")}
        grids = {"image": [data.item_grid(*data.item_size(int(i), SEED)[1:]) for i in f["sources_image"]],
                 "text": [None] * len(sets["text"])}  # fmt: skip
    total = args.items + len(plan["new"])
    keys = [point_id(data.make_key(i, SEED)) for i in range(total)]

    def measure() -> dict:
        result = {}
        for kind in ("image", "text"):
            truth = _truth(scores[kind], None, keys)
            lat, rec = [], []
            for q, grid, expected in zip(sets[kind], grids[kind], truth, strict=True):
                e = _embedding(q, grid)
                index.search_embedding(e, LIMIT)
                t = time.perf_counter()
                hits = index.search_embedding(e, LIMIT)
                lat.append(time.perf_counter() - t)
                rec.append(_recall([h.id for h in hits], expected))
            result[kind] = {"recall_at_10": round(float(np.mean(rec)), 4), "p50_ms": _pct(lat, 50),
                            "p99_ms": _pct(lat, 99)}  # fmt: skip
        return result

    pending = measure()
    t = time.perf_counter()
    index.optimize()
    optimize_s = time.perf_counter() - t
    after = measure()
    out = {
        "redrawn": len(plan["redrawn"]), "new": len(plan["new"]), "write_s": round(write_s, 1),
        "waiting_points": waiting, "while_waiting": pending, "optimize_s": round(optimize_s, 1),
        "after_optimize": after, "segments": index.store.segments(index.name), "points": index.count(),
    }  # fmt: skip
    index.close()
    return out


def local_mode(args) -> dict:
    """Step 5: qdrant-client's local mode (the previous default: brute force in Python), mean first stage."""
    from colqwen2_client.catalog import point_id
    from colqwen2_client.qdrant import MULTI, POOLED
    from colqwen2_client.stores import Record, ServerStore, Stage
    from qdrant_client import QdrantClient

    bases = data.load_bases(args.workdir / "bases.npz")
    store = ServerStore(QdrantClient(location=":memory:"))
    index = _LocalIndex(store)
    started = time.perf_counter()
    batch = []
    for i in range(args.items):
        item = data.make_item(bases, i, SEED)
        pooled = item.vectors.mean(0)
        batch.append(
            Record(point_id(item.key), item.payload, {POOLED: pooled / np.linalg.norm(pooled), MULTI: item.vectors})
        )
        if len(batch) == 64 or i == args.items - 1:
            store.upsert(index.name, batch)
            batch = []
    build_s = time.perf_counter() - started
    with np.load(args.workdir / f"queries-{args.items}.npz") as f:
        sets = {k: _unpack(f, k)[: args.local_queries] for k in ("image", "text")}
        scores = {k: f[f"scores_{k}"][: args.local_queries] for k in ("image", "text")}
    keys = [point_id(data.make_key(i, SEED)) for i in range(args.items)]
    rows = {}
    for kind in ("image", "text"):
        truth = _truth(scores[kind], None, keys)
        lat, rec = [], []
        for q, expected in zip(sets[kind], truth, strict=True):
            pooled = q.mean(0)
            t = time.perf_counter()
            first = [Stage(POOLED, pooled / np.linalg.norm(pooled), 100)]
            found = store.query(index.name, q, MULTI, LIMIT, None, first)
            lat.append(time.perf_counter() - t)
            rec.append(_recall([p.id for p in found], expected))
        rows[kind] = {"n": len(lat), "recall_at_10": round(float(np.mean(rec)), 4), "p50_ms": _pct(lat, 50),
                      "p99_ms": _pct(lat, 99)}  # fmt: skip
    return {"items": args.items, "build_s": round(build_s, 1), "rows": rows, "rss_mb": round(_current_rss_mb()),
            "peak_rss_mb": round(_rss_mb())}  # fmt: skip


class _LocalIndex:
    """The previous default's collection: mean first stage, the multivector for MaxSim, in qdrant-client's local
    mode."""

    name = "visual_embeddings"

    def __init__(self, store) -> None:
        from colqwen2_client.qdrant import MULTI, POOLED
        from colqwen2_client.stores import DENSE, MULTIVECTOR, CollectionSpec, VectorSpec

        vectors = {POOLED: VectorSpec(128, DENSE), MULTI: VectorSpec(128, MULTIVECTOR, hnsw=False)}
        store.create(self.name, CollectionSpec(vectors, {"kind": "keyword"}, {}))


def _pack(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {"flat": np.concatenate(arrays), "lengths": np.array([len(a) for a in arrays])}


def _unpack(f, kind: str) -> list[np.ndarray]:
    flat, lengths = f[f"{kind}_flat"], f[f"{kind}_lengths"]
    return np.split(flat, np.cumsum(lengths)[:-1])


def _child(step: str, args, items: int, extra: list[str] | None = None) -> dict:
    """Run one step in its own process (its memory and its engine are its own), return its JSON."""
    out = args.workdir / f"{step}-{items}.json"
    command = [sys.executable, "-m", "bench.scale", "--step", step, "--items", str(items), "--workdir",
               str(args.workdir), "--out", str(out), "--first-stage", args.first_stage, *(extra or [])]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def run_size(args, items: int, bases) -> dict:
    print(f"== {items} items", file=sys.stderr, flush=True)
    counts = {"image": args.image_queries, "text": args.text_queries, "random": args.random_queries}
    built = _child("build", args, items)
    print(f"built: {json.dumps(built)}", file=sys.stderr, flush=True)
    sets = queries(bases, items, counts)
    t = time.perf_counter()
    scores = exact_scores(bases, list(range(items)), sets)
    truth_s = time.perf_counter() - t
    # the refresh: 1 % redrawn, 0.1 % new; exact scores of those items under their new versions
    rng = np.random.default_rng([SEED, 11, items])
    redrawn = sorted(int(i) for i in rng.choice(items, size=max(1, items // 100), replace=False))
    new = list(range(items, items + max(1, items // 1000)))
    versions = {i: 1 for i in redrawn}
    changed = exact_scores(bases, redrawn + new, {k: sets[k] for k in ("image", "text", "random")}, versions)
    refreshed = {}
    for kind in ("image", "text"):
        full = np.concatenate([scores[kind], np.zeros((len(sets[kind]), len(new)))], axis=1)
        full[:, redrawn + new] = changed[kind]
        refreshed[kind] = full
    np.savez(
        args.workdir / f"queries-{items}.npz",
        **{f"{k}_{part}": v for k in ("image", "text", "random") for part, v in _pack(sets[k]).items()},
        **{f"scores_{k}": v for k, v in scores.items()},
        **{f"refreshed_{k}": v for k, v in refreshed.items()},
        **{f"sources_{k}": np.array(v) for k, v in sets["sources"].items()},
    )
    (args.workdir / f"refresh-{items}.json").write_text(
        json.dumps({"redrawn": redrawn, "new": new, "versions": {str(i): 1 for i in redrawn}})
    )
    searched = _child("search", args, items, ["--prefetch", *map(str, args.prefetch), "--image-prefetch",
                                              *map(str, args.image_prefetch)])  # fmt: skip
    refreshed_run = _child("refresh", args, items)
    result = {"items": items, "build": built, "truth_s": round(truth_s, 1), "search": searched,
              "refresh": refreshed_run, "queries": {k: len(v) for k, v in sets.items() if k != "sources"}}  # fmt: skip
    if items <= args.local_max:
        result["local_mode"] = _child("local", args, items, ["--local-queries", str(args.local_queries)])
    if not args.keep:
        shutil.rmtree(args.workdir / f"edge-{items}", ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"), help="the export whose embeddings "
                        "anchor the synthetic catalog (default %(default)s)")  # fmt: skip
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--prefetch", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--first-stage", choices=["cells", "rows_cols", "mean"], default="cells",
                        help="the collection's first stage (text queries' route): mean leaves the rows/cols HNSW "
                        "out of the build; cells adds its companion collection of pooled tokens")  # fmt: skip
    parser.add_argument("--image-prefetch", type=int, nargs="+", default=[12, 16, 24],
                        help="prefetch sizes for image queries (each candidate's rerank costs hundreds of tokens "
                        "squared); rows_cols and muvera only at the first")  # fmt: skip
    parser.add_argument("--image-queries", type=int, default=20)
    parser.add_argument("--text-queries", type=int, default=20)
    parser.add_argument("--random-queries", type=int, default=10)
    parser.add_argument("--concurrent-rounds", type=int, default=10, help="queries per client of the 8")
    parser.add_argument("--local-max", type=int, default=10_000, help="largest size for qdrant-client's local mode")
    parser.add_argument("--local-queries", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-scale"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--keep", action="store_true", help="keep the built folders")
    parser.add_argument("--step", choices=["build", "search", "refresh", "local"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        args.items = args.items[0]
        step = {"build": build, "search": search, "refresh": refresh, "local": local_mode}[args.step]
        args.out.write_text(json.dumps(step(args), indent=1))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not (args.artifacts / "manifest.json").exists():
        parser.error(f"no export in {args.artifacts}: run `make export` (make bench-scale does)")
    bases = data.real_bases(args.artifacts)
    data.save_bases(bases, args.workdir / "bases.npz")
    report = {
        "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "anchor": str(args.artifacts),
        "sizes": [],
    }
    for items in args.items:
        report["sizes"].append(run_size(args, items, bases))
        name = "scale-" + "-".join(str(s["items"]) for s in report["sizes"])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
        (args.out / f"{name}.md").write_text(to_markdown(report))
        print(f"wrote {args.out / name}.md", file=sys.stderr)
    return 0


def to_markdown(report: dict) -> str:
    lines = [
        "# Catalog search at scale: Qdrant's engine in process (qdrant-edge)",
        "",
        f"`{report['command']}` on {report['machine']}, {report['date']}. Vectors anchored on the embeddings of "
        f"`{report['anchor']}` (`bench/scale_data.py`); latencies are the search alone (the query embedded before).",
        "",
    ]
    for size in report["sizes"]:
        b, s, r = size["build"], size["search"], size["refresh"]
        lines += [
            f"## {size['items']:,} items ({b['vectors_per_item']} vectors per item, {b['vectors']:,} vectors)",
            "",
            f"- build: {b['total_s']} s ({b['items_per_s']} items/s): generate and encode {b['generate_encode_s']} s, "
            f"upsert {b['upsert_s']} s, optimize (HNSW over {', '.join(b['stages'])}; int8 quantization) "
            f"{b['optimize_s']} s; peak RSS {b['peak_rss_mb']:,} MB; on disk {b['disk_bytes'] / 2**30:.2f} GiB, "
            f"{b['disk_bytes_per_item']:,} bytes per item (of which the write-ahead log, bounded: "
            f"{b['wal_bytes'] / 2**20:.0f} MiB); {b['segments']} segments",
            f"- search process: open {s['load_s']} s, RSS {s['rss_mb']:,} MB, PSS {s['pss_mb']:,} MB "
            f"(peak RSS {s['peak_rss_mb']:,} MB)",
            "- `VisualIndex.search_embedding` as a user calls it (route: first stage / candidates; text int8 "
            "rescored, images float16):",
            *[
                f"  - {name}: route {d['route']}, recall@10 {d['recall_at_10']:.3f} (min {d['min_recall']}), p50 "
                f"{d['p50_ms']} ms, p95 {d['p95_ms']} ms, p99 {d['p99_ms']} ms"
                for name, d in s["defaults"].items()
            ],
            f"- 8 concurrent clients (image queries, default): p50 {s['concurrent8']['p50_ms']} ms, p99 "
            f"{s['concurrent8']['p99_ms']} ms, {s['concurrent8']['queries_per_s']} queries/s",
            f"- exact ground truth: {size['truth_s']} s for {size['queries']} queries",
            "- queries per filter (a filter counts the queries whose source item passes it): "
            + ", ".join(f"{k} {n}" for k, n in s.get("queries_per_filter", {}).items()),
            "",
            "| queries | filter | first stage | prefetch | quantization | recall@10 | min | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in s["rows"]:
            lines.append(
                f"| {row['queries']} | {row['where']} | {row['first_stage']} | {row['prefetch']} | "
                f"{row['quantization']} | {row['recall_at_10']:.3f} | {row['min_recall']:.1f} | {row['p50_ms']} | "
                f"{row['p95_ms']} | {row['p99_ms']} |"
            )
        lines += [
            "",
            f"Refresh: {r['redrawn']} items redrawn and {r['new']} new written in {r['write_s']} s; "
            f"{r['waiting_points']} points waiting for the index. While they wait: image recall@10 "
            f"{r['while_waiting']['image']['recall_at_10']:.3f} (p50 {r['while_waiting']['image']['p50_ms']} ms, "
            f"p99 {r['while_waiting']['image']['p99_ms']} ms), text {r['while_waiting']['text']['recall_at_10']:.3f} "
            f"(p50 {r['while_waiting']['text']['p50_ms']} ms). Optimize then took {r['optimize_s']} s; after it: "
            f"image {r['after_optimize']['image']['recall_at_10']:.3f} (p50 {r['after_optimize']['image']['p50_ms']} "
            f"ms), text {r['after_optimize']['text']['recall_at_10']:.3f}; {r['segments']} segments.",
            "",
        ]
        if "local_mode" in size:
            m = size["local_mode"]
            lines += [
                f"qdrant-client's local mode (the previous default; mean first stage, prefetch 100) at {m['items']:,} "
                f"items: build {m['build_s']} s, RSS {m['rss_mb']:,} MB; image queries p50 "
                f"{m['rows']['image']['p50_ms']} ms, p99 {m['rows']['image']['p99_ms']} ms, recall@10 "
                f"{m['rows']['image']['recall_at_10']:.3f}; text p50 {m['rows']['text']['p50_ms']} ms, recall@10 "
                f"{m['rows']['text']['recall_at_10']:.3f} ({m['rows']['image']['n']} queries each).",
                "",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
