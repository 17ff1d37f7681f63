"""Catalog items: manifests, keys, point ids, filters and the row/column first-stage vectors (no server)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from colqwen2_client.catalog import NAMESPACE, folder_items, item_key, memory_items, point_id, read_manifest
from colqwen2_client.errors import InvalidInputError
from colqwen2_client.qdrant import DEFAULT_FILTER_FIELDS, check_where, parse_where
from colqwen2_client.token_pooling import cells, layout, rows_cols


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_keys_and_point_ids_are_stable():
    assert item_key({"key": "photo-42"}) == "photo-42"
    assert item_key({"asin": "B0C1234567", "marketplace": "DE", "kind": "keepa_chart"}) == "DE:B0C1234567:keepa_chart"
    assert item_key({"asin": "B0C1234567"}) == "B0C1234567"
    assert point_id("DE:B0C1234567:keepa_chart") == str(uuid.uuid5(NAMESPACE, "DE:B0C1234567:keepa_chart"))
    # the namespace is part of the on-disk format: changing it would orphan every stored point
    assert point_id("photo-42") == "72802655-de43-572e-8542-8676b8205936"
    with pytest.raises(ValueError, match="no key"):
        item_key({"marketplace": "DE", "path": "x.png"})


def test_manifest_lines_become_items_and_bad_lines_name_themselves(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = write_jsonl(
        tmp_path / "catalog.jsonl",
        [
            {"asin": "B01", "marketplace": "DE", "kind": "keepa_chart", "path": "a.png", "category": "toys"},
            {"key": "photo", "url": "https://example.com/p.jpg", "rank": 3},
            "{not json",
            {"marketplace": "DE", "path": "a.png"},
            {"asin": "B01", "marketplace": "DE", "kind": "keepa_chart", "path": "b.png"},
            {"key": "both", "path": "a.png", "url": "https://example.com/x.png"},
            {"key": "mine", "path": "a.png", "sha256": "abc"},
            {"key": "ftp", "url": "ftp://example.com/x.png"},
            "[1, 2]",
            "",
            {"key": 7, "path": "a.png"},
        ],
    )
    catalog = read_manifest(manifest)
    assert [(i.key, i.line) for i in catalog.items] == [("DE:B01:keepa_chart", 1), ("photo", 2), ("7", 11)]
    first = catalog.items[0]
    assert first.source == str(tmp_path / "a.png") and first.id == point_id("DE:B01:keepa_chart")
    assert first.payload == {"asin": "B01", "marketplace": "DE", "kind": "keepa_chart", "category": "toys",
                             "key": "DE:B01:keepa_chart"}  # fmt: skip
    assert catalog.items[1].payload["rank"] == 3  # JSON types are kept
    problems = [str(p) for p in catalog.problems]
    assert problems == [
        "line 3: not valid JSON: Expecting property name enclosed in double quotes at column 2",
        "line 4: no key: give a `key` column, or `asin` (with `marketplace` and `kind` if you have them)",
        "line 5 (key DE:B01:keepa_chart): duplicate key: line 1 has it too (the first is kept)",
        "line 6 (key both): give exactly one of `path` or `url`",
        "line 7 (key mine): column `sha256` is written by the indexer; rename it",
        "line 8 (key ftp): `url` must start with http:// or https://: 'ftp://example.com/x.png'",
        "line 9: a JSON object per line is needed, not list",
    ]
    assert not catalog.complete  # lines 3, 4 and 9 have no key: pruning would be unsafe


def test_csv_manifest(tmp_path):
    (tmp_path / "c.csv").write_text("key,path,category\nk1,a.png,toys\nk2,b.png\nk3,c.png,toys,extra\nk4,d.png,\n")
    catalog = read_manifest(tmp_path / "c.csv")
    assert [(i.key, i.payload) for i in catalog.items] == [
        ("k1", {"category": "toys", "key": "k1"}),
        ("k4", {"key": "k4"}),  # an empty cell is no value
    ]
    assert [str(p) for p in catalog.problems] == [
        "line 3: fewer fields than the header has (3)",
        "line 4: more fields than the header has (3)",
    ]
    with pytest.raises(InvalidInputError, match=r"a manifest is \.jsonl or \.csv"):
        read_manifest(tmp_path / "c.txt")
    with pytest.raises(InvalidInputError, match="cannot read the manifest"):
        read_manifest(tmp_path / "missing.jsonl")


def test_missing_file_fails_when_read_not_when_parsed(tmp_path):
    catalog = read_manifest(write_jsonl(tmp_path / "m.jsonl", [{"key": "gone", "path": "gone.png"}]))
    with pytest.raises(InvalidInputError, match=r"no such file: .*gone\.png"):
        catalog.items[0].read()


def test_folder_keys_are_paths_relative_to_the_folder(tmp_path):
    (tmp_path / "charts" / "de").mkdir(parents=True)
    for name in ("charts/de/keepa_B01.png", "charts/photo.jpg", "charts/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    catalog = folder_items([tmp_path / "charts", tmp_path / "nowhere"])
    assert [(i.key, i.payload["kind"]) for i in catalog.items] == [
        ("de/keepa_B01.png", "keepa_chart"),
        ("photo.jpg", "product_image"),
    ]
    assert [str(p) for p in catalog.problems] == [f"item: no such file or folder: {tmp_path / 'nowhere'}"]


def test_memory_items_are_content_addressed_unless_keyed(tmp_path):
    items = memory_items([b"one", b"one", b"two"], [{}, {"key": "k"}, {"kind": "keepa_chart"}])
    assert items[0].key.startswith("sha256:") and items[1].key == "k"
    assert items[2].payload == {"kind": "keepa_chart", "key": items[2].key}
    bad = memory_items([12345])[0]
    with pytest.raises(InvalidInputError, match="unsupported image input"):
        bad.read()


def test_filters_are_checked_against_the_collection_fields():
    fields = DEFAULT_FILTER_FIELDS | {"rank": "integer", "prime": "bool"}
    assert parse_where(["kind=keepa_chart", "asin=B01,B02", "rank=3", "prime=true"], fields) == {
        "kind": "keepa_chart",
        "asin": ["B01", "B02"],
        "rank": 3,
        "prime": True,
    }
    with pytest.raises(InvalidInputError, match="unknown filter field 'colour': this collection filters on asin, "):
        parse_where(["colour=red"], fields)
    with pytest.raises(InvalidInputError, match=r"--where 'rank=high': rank is a integer field"):
        parse_where(["rank=high"], fields)
    with pytest.raises(InvalidInputError, match="use FIELD=VALUE"):
        parse_where(["kind"], fields)
    with pytest.raises(InvalidInputError, match="filter 'marketplace' is a keyword field: 4 is a int"):
        check_where({"marketplace": 4}, fields)
    with pytest.raises(InvalidInputError, match="filter 'rank' is a integer field: True is a bool"):
        check_where({"rank": True}, fields)
    with pytest.raises(InvalidInputError, match="an empty list matches nothing"):
        check_where({"asin": []}, fields)


def test_rows_cols_are_the_row_and_column_means_of_the_visual_tokens():
    rng = np.random.default_rng(0)
    offset, grid, rest = 3, (2, 5), 4
    vectors = rng.standard_normal((offset + 10 + rest, 128)).astype(np.float32)
    rows, cols = rows_cols(vectors, grid, offset)
    assert rows.shape == (offset + 2 + rest, 128) and cols.shape == (offset + 5 + rest, 128)
    visual = vectors[offset : offset + 10].reshape(2, 5, 128)
    expected_row = visual[1].mean(0) / np.linalg.norm(visual[1].mean(0))
    expected_col = visual[:, 4].mean(0) / np.linalg.norm(visual[:, 4].mean(0))
    assert np.allclose(rows[offset + 1], expected_row, atol=1e-6)
    assert np.allclose(cols[offset + 4], expected_col, atol=1e-6)
    assert np.array_equal(rows[:offset], vectors[:offset]) and np.array_equal(cols[-rest:], vectors[-rest:])
    with pytest.raises(ValueError, match="does not fit"):
        rows_cols(vectors, (4, 5), offset)


def test_layout_is_the_unit_mean_of_each_region_and_lines_up_across_sizes():
    rng = np.random.default_rng(1)
    offset, rest = 3, 4
    grid = rng.standard_normal((4, 6, 128)).astype(np.float32)
    vectors = np.concatenate([rng.standard_normal((offset, 128)), grid.reshape(24, 128),
                              rng.standard_normal((rest, 128))]).astype(np.float32)  # fmt: skip
    out = layout(vectors, (4, 6), offset)
    assert out.shape == (4 * 128,) and out.dtype == np.float32
    assert np.isclose(np.linalg.norm(out), 1.0, atol=1e-5)
    top_right = grid[:2, 3:].reshape(-1, 128).mean(0)
    assert np.allclose(out[128:256] * 2, top_right / np.linalg.norm(top_right), atol=1e-5)
    # the prompt's tokens are left out
    changed = vectors.copy()
    changed[:offset] += 1
    changed[-rest:] -= 1
    assert np.array_equal(layout(changed, (4, 6), offset), out)
    # the same picture at twice the resolution (each token repeated 2 x 2) has the same layout
    big = np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1).reshape(-1, 128)
    assert np.allclose(layout(big, (8, 12), 0), out, atol=1e-5)
    # a grid smaller than the cells, and a finer layout
    assert layout(vectors[: offset + 1], (1, 1), offset).shape == (512,)
    assert np.isclose(np.linalg.norm(layout(vectors, (4, 6), offset, cells=3)), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        layout(vectors, (5, 6), offset)


def test_cells_pool_the_visual_tokens_two_by_two():
    rng = np.random.default_rng(2)
    offset, rest = 3, 4
    grid = rng.standard_normal((5, 3, 128)).astype(np.float32)  # odd sides: the last cells are narrower
    vectors = np.concatenate([rng.standard_normal((offset, 128)), grid.reshape(15, 128),
                              rng.standard_normal((rest, 128))]).astype(np.float32)  # fmt: skip
    out = cells(vectors, (5, 3), offset)
    assert out.shape == (3 * 2, 128) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)

    def unit(x):
        return x / np.linalg.norm(x)

    assert np.allclose(out[0], unit(grid[:2, :2].reshape(-1, 128).mean(0)), atol=1e-5)
    assert np.allclose(out[1], unit(grid[:2, 2].mean(0)), atol=1e-5)  # a column of one token
    assert np.allclose(out[5], unit(grid[4, 2]), atol=1e-5)  # the corner: one token
    assert np.allclose(cells(vectors, (5, 3), offset, size=1), grid.reshape(15, 128) / np.linalg.norm(
        grid.reshape(15, 128), axis=1, keepdims=True), atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="does not fit"):
        cells(vectors, (7, 3), offset)


def test_the_cli_writes_to_a_per_user_folder_never_the_current_one(tmp_path, monkeypatch):
    from colqwen2_client import cli, qdrant

    for name in ("COLQWEN2_DATA_DIR", "XDG_DATA_HOME", "COLQWEN2_QDRANT_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["search", "a chart", "--html"])
    user = tmp_path / "home" / ".local" / "share" / "colqwen2"
    assert args.qdrant_path == str(user / "qdrant") and args.html == str(user / "results.html")
    assert cli.build_parser().parse_args(["search", "x", "--html", "page.html"]).html == "page.html"
    qdrant.open_qdrant().close()  # the default folder is made on first use
    assert (user / "qdrant").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cli.build_parser().parse_args(["index"]).qdrant_path == str(tmp_path / "xdg" / "colqwen2" / "qdrant")
    monkeypatch.setenv("COLQWEN2_QDRANT_PATH", str(tmp_path / "mine"))
    assert cli.build_parser().parse_args(["index"]).qdrant_path == str(tmp_path / "mine")
    monkeypatch.delenv("COLQWEN2_QDRANT_PATH")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the XDG spec: ignored unless absolute
    assert cli.build_parser().parse_args(["index"]).qdrant_path == str(user / "qdrant")
    (tmp_path / "qdrant_data" / "collection").mkdir(parents=True)  # an index from before: kept in use, not lost
    assert cli.build_parser().parse_args(["index"]).qdrant_path == "qdrant_data"
