"""The `colqwen2` console script against the real Triton server."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from colqwen2_client import ColQwen2Client

from tests.conftest import _console_script
from tests.images import encode, square_chart


def colqwen2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_console_script("colqwen2"), *args], capture_output=True, text=True, timeout=120)


def test_embed_writes_json_lines_and_flags_bad_files(triton_server, tmp_path):
    good = [tmp_path / f"chart{i}.png" for i in range(3)]
    for i, path in enumerate(good):
        path.write_bytes(encode(square_chart(448, seed=40 + i), "PNG"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    url = f"grpc://{triton_server.grpc_url}"
    result = colqwen2("--url", url, "embed", *map(str, good), str(broken), str(tmp_path / "missing.png"), "--progress")
    assert result.returncode == 1, result.stderr  # some inputs failed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [*map(str, good), str(broken), str(tmp_path / "missing.png")]
    with ColQwen2Client(url) as client:
        expected = client.embed(good[0]).pooled
    assert np.array_equal(np.array(lines[0]["embedding"], np.float32), expected)
    assert lines[0]["num_vectors"] == 271 and "vectors" not in lines[0]
    assert "not a recognised image" in lines[3]["error"] and lines[3]["error_type"] == "InvalidInputError"
    assert "no such image file" in lines[4]["error"]
    assert "5/5" in result.stderr  # the progress bar counts every input


def test_embed_all_good_exits_zero_with_vectors(triton_server, tmp_path):
    path = tmp_path / "one.jpg"
    path.write_bytes(encode(square_chart(448), "JPEG"))
    result = colqwen2("--url", f"http://{triton_server.http_url}", "embed", "--vectors", str(path))
    assert result.returncode == 0
    assert len(json.loads(result.stdout)["vectors"]) == 271


def test_query_and_health(triton_server):
    url = f"http://{triton_server.http_url}"
    query = colqwen2("--url", url, "query", "lego price drop")
    assert query.returncode == 0 and json.loads(query.stdout)["num_vectors"] > 10
    health = colqwen2("--url", url, "health")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "healthy"
    bad = colqwen2("--url", url, "query", " ")
    assert bad.returncode == 1 and "empty query" in bad.stderr


def test_unreachable_server_exit_code(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode(square_chart(56), "PNG"))
    down = colqwen2("--url", "http://127.0.0.1:9", "--timeout", "3", "health")
    assert down.returncode == 3 and json.loads(down.stdout)["status"] == "unhealthy"
    embed = colqwen2("--url", "grpc://127.0.0.1:9", "--timeout", "3", "embed", str(path))
    assert embed.returncode == 3
    assert colqwen2("--url", "ftp://x", "health").returncode == 2


def test_embed_and_index_image_urls(triton_server, tmp_path):
    """URLs go through the same fetcher as the gateway's: refused on loopback until the user allows it."""
    from tests.image_server import IMAGE, serve

    url = f"grpc://{triton_server.grpc_url}"
    with serve() as host:
        refused = colqwen2("--url", url, "embed", f"{host}/image.png")
        allowed = colqwen2("--url", url, "--allow-network", "127.0.0.1/32", "embed", f"{host}/image.png",
                           f"{host}/missing.png")  # fmt: skip
        manifest = tmp_path / "catalog.csv"
        manifest.write_text(f"key,url,kind\nchart,{host}/image.png,keepa_chart\ngone,{host}/missing.png,keepa_chart\n")
        index = colqwen2("--url", url, "--allow-network", "127.0.0.1/32", "index", "--manifest", str(manifest),
                         "--qdrant-path", str(tmp_path / "qdrant"))  # fmt: skip
    assert refused.returncode == 1 and "127.0.0.1: the host resolves to an address that is not public" in refused.stdout
    first, second = (json.loads(line) for line in allowed.stdout.splitlines())
    with ColQwen2Client(url) as client:
        assert np.array_equal(np.array(first["embedding"], np.float32), client.embed(IMAGE).pooled)
    assert allowed.returncode == 1 and "HTTP 404" in second["error"] and second["error_type"] == "FetchError"
    assert index.returncode == 1 and json.loads(index.stdout.splitlines()[-1])["new"] == 1
    assert "line 3 (key gone): cannot fetch the image at 127.0.0.1: HTTP 404" in index.stderr
