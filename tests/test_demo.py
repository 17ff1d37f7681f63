"""`make demo`'s program end to end: its own Triton, embedded Qdrant, text and image search."""

from __future__ import annotations

from demo.__main__ import main


def test_demo_indexes_searches_and_stops(tiny_artifacts, tmp_path, capsys):
    assert main(["--artifacts", str(tiny_artifacts), "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "indexed 24 new images" in out and "0 new, 24 skipped; 24 points in total" in out
    assert "text query" in out and "image query" in out and "Triton stopped." in out
    assert "RANDOM weights" in out and "vidore/colqwen2-v1.0" in out
    page = tmp_path / "results.html"
    assert page.exists() and page.read_text().count("class='hit'") == 8
