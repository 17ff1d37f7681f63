"""`make demo`'s program end to end: its own Triton, a catalog in Qdrant's engine in process, a refresh, filtered
search, both stages of each query, and a results page that is the same on every run."""

from __future__ import annotations

import re

from colqwen2_client.qdrant import DEFAULT_FIRST_STAGE

from demo.__main__ import main


def test_demo_indexes_searches_and_stops(tiny_artifacts, tmp_path, capsys):
    assert main(["--artifacts", str(tiny_artifacts), "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "indexed catalog.jsonl: 24 new, 0 replaced, 0 unchanged" in out
    assert "indexing again: 24 unchanged, 0 embedded; 24 points" in out
    assert "chart DE:B0DEMO0000:keepa_chart redrawn: 1 replaced, 23 unchanged, 1 embedded; still 24 points" in out
    assert "where kind=keepa_chart" in out and "re-listed" in out and 'text "' in out
    # images (long queries) prefetch by their layout vector, at most 16; the text query by rows/cols, 100 (all 24)
    assert "stage 1, layout: 12 candidates" in out and "stage 1, layout: 16 candidates" in out  # 12 charts; a photo
    assert out.count(f"stage 1, {DEFAULT_FIRST_STAGE}: 24 candidates") == 1
    assert out.count("stage 2, MaxSim rerank: top 5") == 3
    assert "Triton stopped." in out and "RANDOM weights" in out and "vidore/colqwen2-v1.0" in out
    page = (tmp_path / "results.html").read_text()
    # each query is shown (two images, one text) beside both stages
    assert page.count("<b>query image</b>") == 2 and page.count("<b>query text</b>") == 1
    assert page.count("<h3>Stage 1: layout candidates") == 2
    assert page.count(f"<h3>Stage 1: {DEFAULT_FIRST_STAGE} candidates") == 1
    assert page.count("<h3>Stage 2: MaxSim rerank") == 3
    assert "can and cannot show" in page
    # the random text query ties: marked, and the tied cards ordered by key
    text_part = page.split("<b>query text</b>")[1]
    assert "<span class='tie'>tie</span>" in text_part
    cards = re.findall(r"MaxSim ([0-9.]+)( <span class='tie'>tie</span>)?<br>[^<]*<br>([^<]*)<br>", text_part)
    tied_keys = [key for score, tie, key in cards if tie and score == cards[-1][0]]
    assert tied_keys == sorted(tied_keys)

    # a second run over the same folder (a user running `make demo` again) writes the same page
    assert main(["--artifacts", str(tiny_artifacts), "--workdir", str(tmp_path)]) == 0
    assert (tmp_path / "results.html").read_text() == page
