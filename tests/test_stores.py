"""The two engines behind VisualIndex with the same semantics, on synthetic embeddings (no server needed).

`edge`: Qdrant's engine in process (the default, a local folder). `server`: qdrant-client, the code path a
Qdrant server or cluster gets; its local mode stands in for the server, which cannot run here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from colqwen2_client.catalog import CatalogItem, point_id
from colqwen2_client.errors import InvalidInputError
from colqwen2_client.qdrant import (
    FIRST_STAGES,
    LAYOUT,
    LONG_QUERY_TOKENS,
    MULTI,
    IndexSettings,
    VisualIndex,
    migrate,
    open_qdrant,
)
from colqwen2_client.scoring import maxsim
from colqwen2_client.stores import EdgeStore, ServerStore
from colqwen2_client.token_pooling import cells
from colqwen2_client.types import Embedding

OFFSET = 3  # prompt tokens before the visual ones in these synthetic embeddings


def embedding(rng: np.random.Generator, rows: int, cols: int, base: np.ndarray | None = None) -> Embedding:
    n = OFFSET + rows * cols + 4
    v = rng.standard_normal((n, 128)).astype(np.float32)
    if base is not None:
        v[: len(base)] += 2 * base[: len(v)]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pooled = v.mean(0)
    return Embedding(v, (pooled / np.linalg.norm(pooled)).astype(np.float32), grid=(rows, cols))


def catalog(n: int = 60, seed: int = 0) -> list[tuple[CatalogItem, Embedding, dict]]:
    """Families of 6 alike items (neighbours exist), each with a kind and a marketplace."""
    rng = np.random.default_rng(seed)
    bases = [rng.standard_normal((200, 128)).astype(np.float32) / np.sqrt(128) * 4 for _ in range(n // 6 + 1)]
    out = []
    for i in range(n):
        key = f"item-{i:03d}"
        payload = {"kind": "keepa_chart" if (i // 6) % 2 else "product_image", "marketplace": ["DE", "US", "UK"][i % 3]}
        item = CatalogItem(key=key, source=f"memory:{key}", payload=payload, data=key.encode())
        out.append((item, embedding(rng, 4 + i % 5, 6 + i % 4, bases[i // 6]), payload))
    return out


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    if request.param == "edge":
        s = open_qdrant(tmp_path / "qdrant")
    else:
        from qdrant_client import QdrantClient

        s = ServerStore(QdrantClient(location=":memory:"))
    yield s
    s.close()


def fill(index: VisualIndex, items) -> None:
    index.ensure_collection()
    for item, emb, payload in items:
        index.write(item, index.payload(item, item.data, "sha") | payload, emb)


@pytest.mark.parametrize("first_stage", FIRST_STAGES)
def test_both_engines_search_exactly_within_filters(store, first_stage):
    """Every first stage, filtered or not, with a prefetch as wide as the catalog: the brute-force MaxSim answer
    over the stored vectors, in both engines."""
    index = VisualIndex(None, store, IndexSettings(first_stage=first_stage, prefetch_limit=100), OFFSET)
    items = catalog()
    fill(index, items)
    assert index.count() == 60 and index.count({"kind": "keepa_chart"}) == 30
    stored = index.stored_vectors([i.id for i, _, _ in items])
    assert np.allclose(stored[items[0][0].id], items[0][1].vectors, atol=5e-4)  # float16 storage
    rng = np.random.default_rng(1)
    for q, where in [
        (items[7][1], None),
        (embedding(rng, 2, 3, None), {"kind": "keepa_chart"}),
        (items[20][1], {"marketplace": ["DE", "UK"], "kind": "product_image"}),
    ]:
        wanted = {k: v if isinstance(v, list) else [v] for k, v in (where or {}).items()}
        allowed = [i for i, _, p in items if all(p[k] in v for k, v in wanted.items())]
        brute = {i.id: maxsim(q.vectors, stored[i.id]) for i in allowed}
        expected = sorted(brute, key=lambda pid: -brute[pid])[:5]
        hits = index.search_embedding(q, limit=5, where=where)
        assert [h.id for h in hits] == expected, (first_stage, where)
        assert np.allclose([h.score for h in hits], [brute[h.id] for h in hits], rtol=1e-4)
    if first_stage != "none":
        first = index.first_stage_hits(items[7][1], limit=5)
        assert 0 < len(first) <= 10 and items[7][0].id in {h.id for h in first}


def test_image_queries_take_the_layout_route_in_both_engines(store):
    """A long query with a grid (an image) goes through the `layout` vector with few candidates; as wide as the
    catalog, that is the brute-force answer; a near-duplicate finds its original first. Without a grid: `pooled`."""
    settings = IndexSettings(long_query_prefetch=40, prefetch_limit=100)
    index = VisualIndex(None, store, settings, OFFSET)
    rng = np.random.default_rng(5)
    items = catalog(36)
    fill(index, items)
    assert store.metadata(index.name)["colqwen2"]["layout"] == 2 and index.schema.layout == 2
    (record,) = index.records([items[3][0].id], vectors=[LAYOUT])
    assert record.vectors[LAYOUT].shape == (512,)
    original = items[3][1]
    noisy = original.vectors + 0.2 * rng.standard_normal(original.vectors.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    query = Embedding(noisy, original.pooled, grid=original.grid)
    big = embedding(rng, 9, 9, None)  # 88 vectors: an image query even with no neighbour
    assert big.num_vectors > LONG_QUERY_TOKENS
    assert index.route(big) == ("layout", 40)
    assert index.route(Embedding(big.vectors, big.pooled)) == ("mean", 40)  # no grid
    assert index.route(items[7][1]) == ("cells", 100)  # a short query: the collection's first stage
    stored = index.stored_vectors([i.id for i, _, _ in items])
    for q in (query, big):
        brute = {pid: maxsim(q.vectors, v) for pid, v in stored.items()}
        expected = sorted(brute, key=lambda pid: -brute[pid])[:5]
        hits = index.search_embedding(q, limit=5, first_stage=None)
        if q is query:
            assert hits[0].id == items[3][0].id
        assert len(hits) == 5 and all(np.isclose(h.score, brute[h.id], rtol=1e-4) for h in hits)
        wide = index.search_embedding(q, limit=5, prefetch_limit=36, first_stage="layout")
        assert [h.id for h in wide] == expected
    with pytest.raises(InvalidInputError, match="needs an image query"):
        index.search_embedding(Embedding(big.vectors, big.pooled), first_stage="layout")  # a query with no grid
    first = index.first_stage_hits(query, limit=3)
    assert first[0].id == items[3][0].id and len(first) == 3
    none = VisualIndex(None, store, IndexSettings(collection="plain", first_stage="none"), OFFSET)
    assert none.spec().metadata["colqwen2"].get("layout") is None and none.route(big) == ("none", 200)


def test_both_engines_refresh_delete_and_prune(store):
    index = VisualIndex(None, store, IndexSettings(), OFFSET)
    items = catalog(24)
    fill(index, items)
    item, _, payload = items[0]
    new = embedding(np.random.default_rng(9), 5, 5)
    index.write(item, index.payload(item, item.data, "sha2") | payload, new)
    (record,) = index.records([item.id], vectors=[MULTI])
    assert record.payload["sha256"] == "sha2" and np.allclose(record.vectors[MULTI], new.vectors, atol=5e-4)
    index.write(item, record.payload | {"category": "toys"})  # payload only
    assert index.records([item.id])[0].payload["category"] == "toys" and index.count() == 24
    assert index.delete(keys=[item.key, "never"]) == 1 and index.count() == 23
    assert index.delete(where={"kind": "product_image"}) == 11 and index.count() == 12
    assert index.prune([i.key for i, _, _ in items[6:9]]) == 9 and index.count() == 3
    assert sorted(store.ids(index.name)) == sorted(i.id for i, _, _ in items[6:9])


def test_both_engines_keep_the_cells_of_live_items_only(store):
    """First stage `cells`: the companion collection holds exactly the cells of the points there, with their
    filter fields, through a refresh (a new grid), a payload-only change, deletes and a prune."""
    index = VisualIndex(None, store, IndexSettings(first_stage="cells", prefetch_limit=100), OFFSET)
    items = catalog(18)
    fill(index, items)

    def cells_of(emb):
        return len(cells(emb.vectors, emb.grid, OFFSET))

    live = {i.id: cells_of(e) for i, e, _ in items}
    assert store.count(index.cells_name) == sum(live.values()) and index.collections()[1] == index.cells_name
    item, _, payload = items[0]
    new = embedding(np.random.default_rng(4), 3, 3)  # a redrawn image on a smaller grid: fewer cells
    index.write(item, index.payload(item, item.data, "sha2") | payload, new)
    live[item.id] = cells_of(new)
    assert store.count(index.cells_name) == sum(live.values())
    assert store.count(index.cells_name, {"item": item.id}) == 4
    # a payload-only change reaches the cells' filter fields: a filtered text search finds the item by its new kind
    other = "keepa_chart" if payload["kind"] == "product_image" else "product_image"
    index.write(item, index.records([item.id])[0].payload | {"kind": other})
    assert store.count(index.cells_name, {"item": item.id, "kind": other}) == 4
    text = Embedding(new.vectors[OFFSET : OFFSET + 3], new.pooled)  # three of its visual tokens
    assert index.search_embedding(text, limit=1, where={"kind": other})[0].id == item.id
    assert index.first_stage_hits(text, limit=3, where={"kind": other})[0].payload["key"] == item.key
    index.delete(keys=[items[1][0].key])
    index.delete(where={"marketplace": "UK"})
    index.prune([i.key for i, _, _ in items[:12]])
    kept = set(store.ids(index.name))
    assert store.count(index.cells_name) == sum(n for pid, n in live.items() if pid in kept) > 0
    with pytest.raises(InvalidInputError, match="has no 'cells' first stage"):
        other = VisualIndex(None, store, IndexSettings(collection="other", first_stage="mean"), OFFSET)
        other.search_embedding(text, first_stage="cells")


class BytesEmbedder:
    """A stand-in for the SDK client: the same bytes, the same synthetic embedding; bytes starting `bad` fail."""

    def __init__(self) -> None:
        self.embedded: list[bytes] = []

    def one(self, data: bytes) -> Embedding:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        return embedding(np.random.default_rng(seed), 3 + seed % 3, 4)

    def embed_batch(self, images, return_exceptions: bool = False) -> list:
        self.embedded += images
        return [InvalidInputError("corrupt image") if d.startswith(b"bad") else self.one(d) for d in images]


def test_one_item_at_a_time_and_the_bulk_index_take_the_same_path(store):
    """`plan`, embed, `apply` (the gateway's /index, one item) and `index` (a catalog, in chunks) decide, embed and
    write alike: new, unchanged, payload-only and replaced items, the same points and cells, nothing re-embedded."""
    embedder = BytesEmbedder()
    settings = IndexSettings(first_stage="cells", chunk=3)
    bulk = VisualIndex(embedder, store, replace(settings, collection="bulk"), OFFSET)
    single = VisualIndex(None, store, replace(settings, collection="single"), OFFSET)

    def item(key: str, data: bytes, **payload) -> CatalogItem:
        return CatalogItem(key, f"memory:{key}", payload | {"kind": "keepa_chart"}, data=data)

    def one_by_one(items: list[CatalogItem]) -> list[str]:
        single.ensure_collection()
        statuses = []
        for it in items:
            (change,) = single.plan([it], [it.data])
            single.apply([change], [embedder.one(it.data)] if change.embeds else [])
            statuses.append(change.status)
        return statuses

    first = [item(f"k{i}", f"chart {i}".encode(), marketplace="DE") for i in range(7)]
    report = bulk.index(first)
    assert (report.new, report.failed, one_by_one(first)) == (7, [], ["new"] * 7)
    second = [
        first[0],  # unchanged
        item("k1", b"chart 1", marketplace="US"),  # payload only
        item("k2", b"chart 2, redrawn", marketplace="DE"),  # replaced
        item("k7", b"chart 7", marketplace="UK"),  # new
        item("k8", b"bad bytes", marketplace="UK"),  # its embedding fails
    ]
    embedder.embedded.clear()
    report = bulk.index(second)
    summary = report.summary()
    assert [summary[k] for k in ("new", "replaced", "updated", "unchanged", "failed")] == [1, 1, 1, 1, 1]
    assert report.failed == [("key k8", "corrupt image")]
    assert embedder.embedded == [b"chart 2, redrawn", b"chart 7", b"bad bytes"]  # not the unchanged content
    assert one_by_one(second[:4]) == ["unchanged", "updated", "replaced", "new"]
    (bad,) = single.plan([second[4]], [second[4].data])
    with pytest.raises(InvalidInputError, match="corrupt image"):
        single.apply([bad], embedder.embed_batch([bad.data]))
    ids = sorted(store.ids(bulk.name))
    assert ids == sorted(store.ids(single.name)) and len(ids) == 8
    volatile = {"indexed_at"}
    for a, b in zip(bulk.records(ids, [MULTI]), single.records(ids, [MULTI]), strict=True):
        assert {k: v for k, v in a.payload.items() if k not in volatile} == {
            k: v for k, v in b.payload.items() if k not in volatile
        }
        assert np.array_equal(a.vectors[MULTI], b.vectors[MULTI])
    for pid in ids:
        for where in ({"item": pid}, {"item": pid, "marketplace": "US"}):
            assert store.count(bulk.cells_name, where) == store.count(single.cells_name, where)
    assert store.count(bulk.cells_name, {"marketplace": "US"}) > 0  # the payload-only change reached the cells


def test_the_local_engine_indexes_in_steps_and_searches_what_waits(tmp_path):
    """Written points wait in the appendable segment, searched exactly; optimize() indexes them (HNSW, int8);
    replaced points wait again while the rest stays indexed; all of it survives a reopen."""
    small = VisualIndex(None, open_qdrant(tmp_path / "small"), visual_token_offset=OFFSET)
    fill(small, catalog(12))
    assert not small.optimize()  # 12 items are far below the 20 MB threshold: nothing to build, searched exactly
    small.close()
    index = VisualIndex(None, EdgeStore(tmp_path / "q", indexing_threshold_kb=1), visual_token_offset=OFFSET)
    items = catalog(60)
    fill(index, items[:30])
    assert index.search_embedding(items[4][1], limit=1)[0].id == items[4][0].id  # waiting, found
    fill(index, items[30:])
    assert index.optimize()
    info = index.store._shard(index.name).info()
    assert info.indexed_vectors_count >= 60 * 3  # pooled, muvera and the multivector of every point
    fill(index, items[:2])  # a refresh: two replaced points wait, the rest is indexed
    assert index.count() == 60
    for k in (1, 40):
        assert index.search_embedding(items[k][1], limit=1)[0].id == items[k][0].id
    assert index.optimize()
    index.close()
    reopened = VisualIndex(None, open_qdrant(tmp_path / "q"))
    assert reopened.count() == 60 and reopened.search_embedding(items[40][1], limit=1)[0].id == items[40][0].id
    reopened.close()


def test_one_process_at_a_time_and_a_killed_collection_creation(tmp_path):
    first = open_qdrant(tmp_path / "q")
    with pytest.raises(InvalidInputError, match=r"is open in process \d+"):
        open_qdrant(tmp_path / "q")
    first.close()
    (tmp_path / "q" / "visual_embeddings" / "segments").mkdir(parents=True)  # created, schema never written
    index = VisualIndex(None, open_qdrant(tmp_path / "q"), visual_token_offset=OFFSET)
    assert not index.exists() and index.count() == 0
    fill(index, catalog(6))
    assert index.count() == 6
    index.close()


def test_migrate_copies_the_previous_local_mode_without_embedding(tmp_path):
    """An index written by qdrant-client's local mode: refused with the way out, then migrated: same points,
    payloads and MaxSim answers, the new first stage computed from the stored vectors."""
    from qdrant_client import QdrantClient

    old = ServerStore(QdrantClient(path=str(tmp_path / "old")))
    before = VisualIndex(None, old, IndexSettings(first_stage="rows_cols", quantization="none"), OFFSET)
    items = catalog(30)
    fill(before, items)
    query = items[11][1]
    expected = [(h.id, round(h.score, 2)) for h in before.search_embedding(query, limit=5, first_stage="none")]
    old.close()
    with pytest.raises(InvalidInputError, match="colqwen2 migrate"):
        open_qdrant(tmp_path / "old")
    for stage in ("muvera", "rows_cols"):
        index = VisualIndex(None, open_qdrant(tmp_path / stage), IndexSettings(first_stage=stage))
        assert migrate(tmp_path / "old", index) == 30
        assert index.count() == 30 and index.schema.first_stage == stage and index.schema.layout == 0  # no grid kept
        assert index.records([point_id("item-003")])[0].payload["marketplace"] == "DE"
        got = [(h.id, round(h.score, 2)) for h in index.search_embedding(query, limit=5)]
        assert got == expected
        index.close()
    meta = json.loads((tmp_path / "muvera" / "visual_embeddings.colqwen2.json").read_text())
    assert meta["colqwen2"]["first_stage"] == "muvera" and "muvera" in meta["vectors"]


def test_cli_migrate_then_search_the_new_folder(tmp_path, capsys):
    from colqwen2_client import cli
    from qdrant_client import QdrantClient

    old = ServerStore(QdrantClient(path=str(tmp_path / "old")))
    fill(VisualIndex(None, old, IndexSettings(first_stage="mean", quantization="none"), OFFSET), catalog(12))
    old.close()
    assert cli.main(["search", "x", "--qdrant-path", str(tmp_path / "old")]) == 1
    assert "colqwen2 migrate" in capsys.readouterr().err
    assert cli.main(["migrate", str(tmp_path / "old"), "--qdrant-path", str(tmp_path / "new")]) == 0
    assert json.loads(capsys.readouterr().out) == {"copied": 12, "points": 12, "first_stage": "mean"}  # kept
    index = VisualIndex(None, open_qdrant(tmp_path / "new"))
    assert index.count() == 12 and index.schema.first_stage == "mean"
    index.close()
    asked = ["migrate", str(tmp_path / "old"), "--qdrant-path", str(tmp_path / "other"), "--first-stage", "rows_cols"]
    assert cli.main(asked) == 1 and "has no rows/cols vectors" in capsys.readouterr().err


def test_the_build_runs_in_a_child_while_this_process_stays_free(tmp_path):
    """optimize() holds the interpreter, so a long build runs in a child process: the parent keeps the lock, sees
    time pass (progress, ETA), and searches the built index afterwards."""
    index = VisualIndex(None, EdgeStore(tmp_path / "q", indexing_threshold_kb=1), visual_token_offset=OFFSET)
    items = catalog(30)
    fill(index, items)
    ticks: list[float] = []
    assert index.store.optimize_in_child(index.name, ticks.append) is True
    assert ticks and ticks == sorted(ticks)
    assert index.store._shard(index.name).info().indexed_vectors_count >= 30 * 3
    assert index.search_embedding(items[9][1], limit=1)[0].id == items[9][0].id
    with pytest.raises(InvalidInputError, match="is open in process"):
        open_qdrant(tmp_path / "q")  # the lock stayed with the parent throughout
    index.close()
