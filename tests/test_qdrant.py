"""Qdrant integration on embedded Qdrant, with embeddings from the real Triton server."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from colqwen2_client import ColQwen2Client
from colqwen2_client.qdrant import IndexSettings, VisualIndex, open_qdrant, point_id
from colqwen2_client.token_pooling import pool_tokens

from demo.samples import write_samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("samples"), charts=5, products=5)


@pytest.fixture(scope="module")
def client(triton_server):
    with ColQwen2Client(f"grpc://{triton_server.grpc_url}") as c:
        yield c


def kinds(paths):
    return [{"kind": "keepa_chart" if p.name.startswith("keepa") else "product_image"} for p in paths]


def test_index_then_search_round_trips(client, samples, tmp_path):
    index = VisualIndex(client, open_qdrant(tmp_path / "qdrant"))
    report = index.index([str(p) for p in samples], kinds(samples))
    assert (report.indexed, report.skipped, report.failed) == (10, 0, [])
    assert index.count() == 10
    hits = index.search(image=str(samples[7]), limit=3)
    assert hits[0].payload["source"] == str(samples[7]) and hits[0].id == point_id(samples[7].read_bytes())
    assert hits[0].payload["kind"] == "product_image" and hits[0].payload["size"] == [600, 600]
    # MaxSim of an image with itself: one per vector (a 600 x 600 photo: 21 x 21 visual tokens and 15 of the prompt)
    assert hits[0].score == pytest.approx(21 * 21 + 15, abs=1e-2)
    text = index.search(text="keepa price history", limit=4)
    assert len(text) == 4 and all(set(h.payload) >= {"source", "kind", "size", "bytes"} for h in text)


def test_reindexing_adds_nothing_and_an_interrupted_run_resumes(client, samples, tmp_path):
    index = VisualIndex(client, open_qdrant(tmp_path / "qdrant"))
    index.index([str(p) for p in samples[:4]], kinds(samples[:4]))  # "interrupted" after 4
    resumed = index.index([str(p) for p in samples], kinds(samples))
    assert (resumed.indexed, resumed.skipped) == (6, 4) and index.count() == 10
    again = index.index([p.read_bytes() for p in samples])  # same bytes, any form: same points
    assert (again.indexed, again.skipped) == (0, 10) and index.count() == 10


def test_rerank_order_equals_brute_force_maxsim(client, samples, tmp_path):
    index = VisualIndex(client, open_qdrant(":memory:"), IndexSettings(oversampling=10))
    index.index([str(p) for p in samples], kinds(samples))
    stored = index.stored_vectors([point_id(p.read_bytes()) for p in samples])
    for query in (client.embed_query("amazon price drop chart"), client.embed(samples[2])):
        hits = index.search_embedding(query, limit=10)  # prefetch 100 >= 10 points: every point is reranked
        brute = {pid: float((query.vectors @ v.T).max(axis=1).sum()) for pid, v in stored.items()}
        expected = sorted(brute, key=lambda pid: -brute[pid])
        assert [h.id for h in hits] == expected
        assert np.allclose([h.score for h in hits], [brute[pid] for pid in expected], rtol=1e-4)


def test_prefetch_limits_the_rerank_to_the_first_stage(client, samples, tmp_path):
    index = VisualIndex(client, open_qdrant(":memory:"), IndexSettings(oversampling=1))
    index.index([str(p) for p in samples], kinds(samples))
    query = client.embed(samples[0])
    hits = index.search_embedding(query, limit=3)
    stored = index.stored_vectors([point_id(p.read_bytes()) for p in samples])
    pooled = {pid: v.mean(0) / np.linalg.norm(v.mean(0)) for pid, v in stored.items()}
    first_stage = sorted(pooled, key=lambda pid: -float(pooled[pid] @ query.pooled))[:3]
    assert {h.id for h in hits} == set(first_stage)


def test_token_pooling_matches_colpali_engine_and_shrinks_storage(client, samples, tmp_path):
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    vectors = client.embed(samples[0]).vectors
    ours = pool_tokens(vectors, 3)
    theirs = HierarchicalTokenPooler().pool_embeddings([torch.from_numpy(vectors.copy())], pool_factor=3)[0].numpy()
    assert ours.shape == theirs.shape and len(ours) <= len(vectors) // 3
    assert np.abs(ours - theirs).max() < 1e-5
    index = VisualIndex(client, open_qdrant(":memory:"), IndexSettings(pool_factor=3, quantization="scalar"))
    report = index.index([str(p) for p in samples], kinds(samples))
    assert report.stored_vectors <= report.raw_vectors // 3 + len(samples)
    assert index.search(image=str(samples[3]), limit=1)[0].id == point_id(samples[3].read_bytes())


def test_cli_index_and_search(triton_server, samples, tmp_path):
    import json
    import subprocess

    from tests.conftest import _console_script

    base = [_console_script("colqwen2"), "--url", f"http://{triton_server.http_url}"]
    store = ["--qdrant-path", str(tmp_path / "qdrant")]
    folder = str(samples[0].parent)
    first = subprocess.run([*base, "index", folder, *store], capture_output=True, text=True, check=True)
    assert json.loads(first.stdout)["indexed"] == 10
    again = subprocess.run([*base, "index", folder, *store], capture_output=True, text=True, check=True)
    assert json.loads(again.stdout) | {} == json.loads(again.stdout) and json.loads(again.stdout)["points"] == 10
    page = tmp_path / "results.html"
    found = subprocess.run(
        [*base, "search", "--image", str(samples[1]), "--limit", "3", "--html", str(page), *store],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert found.stdout.splitlines()[2].split()[-1].endswith(samples[1].name)  # rank 1 is the image itself
    assert page.exists() and "data:image/jpeg;base64," in page.read_text()
    text = subprocess.run([*base, "search", "sales rank spike", *store], capture_output=True, text=True, check=True)
    assert "top 10 by MaxSim" in text.stdout
    empty = subprocess.run(
        [*base, "search", "x", "--qdrant-path", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert empty.returncode == 2 and "collection is empty" in empty.stderr
