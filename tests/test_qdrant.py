"""Qdrant integration on embedded Qdrant, with embeddings from the real Triton server."""

from __future__ import annotations

import json

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


def test_cli_index_killed_mid_run_then_rerun_is_exact(triton_server, tmp_path):
    """SIGKILL `colqwen2 index` after its first chunk is stored, run it again: every image once, with its vectors."""
    import io
    import os
    import signal
    import subprocess
    import time

    from PIL import Image

    from tests.conftest import _console_script

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(150):  # distinct content: the point id is the content's hash
        pixels = rng.integers(0, 255, (24 + i % 5 * 8, 40 + i % 7 * 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        (folder / f"img_{i:03d}.png").write_bytes(buffer.getvalue())
    store = tmp_path / "qdrant"
    command = [
        _console_script("colqwen2"), "--url", f"grpc://{triton_server.grpc_url}", "index", str(folder),
        "--qdrant-path", str(store), "--progress",
    ]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen, deadline = b"", time.monotonic() + 120
    os.set_blocking(first.stderr.fileno(), False)
    while b"64/150" not in seen:  # the first chunk of 64 is upserted before the bar moves
        assert time.monotonic() < deadline and first.poll() is None, seen[-300:]
        seen += first.stderr.read() or b""
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["points"] == 150 and summary["indexed"] + summary["skipped"] == 150
    assert summary["skipped"] >= 64  # what the killed run stored is kept, not embedded again

    from qdrant_client import QdrantClient

    qdrant = QdrantClient(path=str(store))
    points, _ = qdrant.scroll("visual_embeddings", limit=1000, with_vectors=True, with_payload=True)
    qdrant.close()
    assert len(points) == 150 and len({p.id for p in points}) == 150  # no duplicates
    assert {p.payload["source"] for p in points} == {str(f.resolve()) for f in folder.iterdir()}
    for point in points:  # no point without its vectors
        assert len(point.vector["pooled"]) == 128 and len(point.vector["colqwen2"]) >= 1
