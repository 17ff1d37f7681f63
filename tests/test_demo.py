"""`make demo`'s program end to end: its own Triton, a catalog in embedded Qdrant, a refresh, filtered search."""

from __future__ import annotations

from demo.__main__ import main


def test_demo_indexes_searches_and_stops(tiny_artifacts, tmp_path, capsys):
    assert main(["--artifacts", str(tiny_artifacts), "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "indexed catalog.jsonl: 24 new, 0 replaced, 0 unchanged" in out
    assert "indexing again: 24 unchanged, 0 embedded; 24 points" in out
    assert "chart DE:B0DEMO0000:keepa_chart redrawn: 1 replaced, 23 unchanged, 1 embedded; still 24 points" in out
    assert "text query" in out and "image query" in out and "where kind=keepa_chart: top 4" in out
    assert "Triton stopped." in out and "RANDOM weights" in out and "vidore/colqwen2-v1.0" in out
    page = (tmp_path / "results.html").read_text()
    assert page.count("class='hit'") == 5 + 3 + 4 and page.count("class='hit query'") == 2  # queries beside hits
