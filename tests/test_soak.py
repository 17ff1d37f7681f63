"""`make soak`'s short version in `make test`: a minute of mixed traffic through the SDK and the gateway
against `make serve` (the supervisor included), after half a minute of warm-up; no good input may fail and
memory may not keep growing. The 30-minute record is bench/results/soak-1800s-cpu2.md."""

from __future__ import annotations

import json

from bench.soak import main


def test_a_minute_of_mixed_traffic_leaves_no_error_and_flat_memory(tiny_artifacts, tmp_path):
    out = tmp_path / "soak"
    code = main(["--artifacts", str(tiny_artifacts), "--duration", "60", "--warmup", "30", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    assert code == 0, report["failures"]
    outcomes = {kind: row["outcomes"] for kind, row in report["by_kind"].items()}
    assert set(outcomes["bad"]) == {"refused"}  # every bad input refused as bad input, nothing else
    for kind in ("sdk_image", "gateway_image", "sdk_query", "gateway_query", "health"):
        assert set(outcomes[kind]) == {"ok"}, (kind, outcomes[kind])
    assert report["requests"] > 100
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").stat().st_size > 10_000
