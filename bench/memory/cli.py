"""The run: weights of the real-size model, activation peaks on the slices, deployments and budgets, written as
`memory-real.json` and `memory-real.md`; and its command line."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from model_repository.budgets import CAP_TOKENS, GB, GIB, GPU_MEMORY, SESSION_BUDGETS, GpuMemory, gpu_call_budgets

from . import __doc__ as package_doc
from .activations import ActivationModel
from .budgets import (
    DEFAULT_OVERHEAD_GIB,
    DEPLOYMENTS,
    ENCODER_PROCESSES,
    Scenario,
    deployment,
    gpu_budgets,
    gpu_memory,
    recommend,
    scenarios,
)
from .model import GRAPH_NAMES, VARIANTS, qwen2vl_config
from .report import assumptions, markdown
from .slices import SLICE_LAYERS, export_slice
from .weights import real_weights

log = logging.getLogger(__package__)

ROOT = Path(__file__).resolve().parents[2]


def run(out_dir: Path, workdir: Path, overhead_gib: float, rebuild: bool = False) -> dict:
    """Compute everything and write `memory-real.json` and `memory-real.md` into `out_dir`."""
    started = time.time()
    hidden = qwen2vl_config("real").text_config.hidden_size
    weights = real_weights()
    log.info("real-size weights: %d parameters", weights["parameters"])
    slice_info = export_slice(workdir / f"slice-{SLICE_LAYERS}", SLICE_LAYERS, rebuild=rebuild)
    folder = workdir / f"slice-{SLICE_LAYERS}"
    models = {v: {g: ActivationModel(folder / v / f"{g}.onnx") for g in GRAPH_NAMES} for v in VARIANTS}
    budgets = {precision: gpu_budgets(precision) for precision in DEPLOYMENTS}
    calls = distinct_calls(budgets)
    rows = [activation_row(call, models, hidden) for call in calls]
    scenarios_run = [call["scenario"] for call in calls]
    check_slices, layer_check = layer_count_check(scenarios_run, models["fp32"], workdir, hidden, rebuild)
    overhead = round(ENCODER_PROCESSES * overhead_gib * GIB)
    deployments, recommendations = deployments_and_budgets(weights, rows, models, budgets, overhead, hidden)
    result = {
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, {os_cpu_count()} cores, no GPU",
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime", "transformers", "colpali-engine")},
        "seconds": 0.0,
        "checkpoint": "real: Qwen2-VL-2B shapes (export.random_checkpoint.SIZES['real'])",
        "cap_tokens": CAP_TOKENS,
        "gpu_budgets_today": budgets,
        "overhead_per_process_bytes": round(overhead_gib * GIB),
        "weights": weights,
        "slice": slice_info,
        "layer_check_slices": check_slices,
        "activations": rows,
        "layer_count_check": layer_check,
        "deployments": deployments,
        "recommended_gpu_budgets": recommendations,
        "assumptions": assumptions(overhead_gib),
    }
    result["seconds"] = round(time.time() - started, 1)
    result["peak_rss_bytes"] = peak_rss()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory-real.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "memory-real.md").write_text(markdown(result))
    return result


def distinct_calls(budgets: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """The scenarios of every precision, one entry per distinct call (a call specific to one precision's budgets
    named after it), with per precision whether its budgets allow the call and whether it is its TensorRT box."""
    calls: dict[tuple, dict] = {}
    for precision, precision_budgets in budgets.items():
        for s in scenarios(precision_budgets):
            specific = (s.in_gpu_budget and s.name.startswith("GPU")) or s.trt_box
            key = (s.graph, s.batch, s.length, s.visual_rows, s.name if specific else "")
            row = calls.setdefault(key, {"scenario": s, "in_budget": {}, "box": {}})
            if specific and row["scenario"].name == s.name:
                row["scenario"] = replace(s, name=f"{precision}: {s.name}")
            row["in_budget"][precision] = s.in_gpu_budget
            row["box"][precision] = s.trt_box
    return list(calls.values())


def activation_row(call: dict, models: Mapping[str, Mapping[str, ActivationModel]], hidden: int) -> dict:
    """One call's peaks in every variant (unfused, and the fused-attention estimate) and where they happen."""
    s = call["scenario"]
    peaks = {v: models[v][s.graph].peaks(s.shapes(hidden)) for v in VARIANTS}
    log.info("%s, %s: fp16 peak %.3f GB", s.graph, s.name, peaks["fp16"][0].bytes / GB)
    return {
        **asdict(s),
        "in_budget": {p: call["in_budget"].get(p, False) for p in DEPLOYMENTS},
        "box": {p: call["box"].get(p, False) for p in DEPLOYMENTS},
        "peak": {v: p[0].bytes for v, p in peaks.items()},
        "fused_attention_estimate": {v: p[1].bytes for v, p in peaks.items()},
        "at": {v: {"node": p[0].node, "largest": [list(x) for x in p[0].largest]} for v, p in peaks.items()},
    }


def layer_count_check(calls: Sequence[Scenario], fp32: Mapping[str, ActivationModel], workdir: Path, hidden: int,
                      rebuild: bool) -> tuple[dict, list[dict]]:  # fmt: skip
    """The peak is the same for any layer count from 2 on: the budget and box calls on fp32 slices of 1, 2 (`fp32`)
    and 3 layers. Returns the extra slices' export records and the peaks per layer count."""
    check_slices, by_layers = {}, {SLICE_LAYERS: fp32}
    for layers in (1, 3):
        check_slices[layers] = export_slice(workdir / f"slice-{layers}", layers, ("fp32",), rebuild)
        by_layers[layers] = {
            g: ActivationModel(workdir / f"slice-{layers}" / "fp32" / f"{g}.onnx") for g in GRAPH_NAMES
        }
    layer_check = [
        {
            "scenario": f"{s.graph}: {s.name}",
            **{str(n): by_layers[n][s.graph].peak(s.shapes(hidden)) for n in (1, 2, 3)},
        }
        for s in calls
        if s.in_gpu_budget or s.trt_box
    ]
    return check_slices, layer_check


def deployments_and_budgets(weights: dict, rows: Sequence[dict], models: Mapping[str, Mapping[str, ActivationModel]],
                            budgets: Mapping[str, Mapping[str, int]], overhead: int,
                            hidden: int) -> tuple[list[dict], dict]:  # fmt: skip
    """Per GPU precision: the deployment on every basis, and the largest call budgets that fit (unfused, fused).
    Warns when this run measures other inputs than those `model_repository.budgets` derives the GPU budgets from."""
    deployments, recommendations = [], {}
    for precision, variant in DEPLOYMENTS.items():
        w = {g: weights["bytes"][variant][g]["total"] for g in GRAPH_NAMES}
        bases = ("call", "box", "fused", "box fused")
        deployments += [deployment(precision, w, rows, basis, overhead) for basis in bases]
        vision, text = models[variant]["vision_encoder"], models[variant]["text_encoder"]
        measured = gpu_memory(precision, sum(w.values()), overhead, vision, text, hidden)
        _check_product_inputs(precision, measured)
        room = measured.room
        log.info("%s: %.3f GB left for activations; searching budgets", precision, room / GB)
        recommendations[precision] = {
            basis: recommend(vision, text, hidden, room, 32, budgets[precision]["max_session_tokens"], basis == "fused")
            for basis in ("unfused", "fused")
        }
        for rec in recommendations[precision].values():
            if "activations" in rec:
                rec["total"] = sum(w.values()) + overhead + rec["activations"]
    return deployments, recommendations


def _check_product_inputs(precision: str, measured: GpuMemory) -> None:
    """Warn when `model_repository.budgets.GPU_MEMORY` holds other weights or peaks than this run measured."""
    product = GPU_MEMORY[precision]
    ours = replace(measured, overhead=product.overhead)  # --overhead-gib moves the room, not the product's inputs
    if ours == product:
        return
    try:
        derived: object = gpu_call_budgets(ours)
    except ValueError as exc:
        derived = f"none ({exc})"
    log.warning(
        "%s: this run measures %s, model_repository.budgets.GPU_MEMORY holds %s: its GPU budgets would be %s, not %s",
        precision,
        ours,
        product,
        derived,
        SESSION_BUDGETS["gpu"][precision],
    )


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def os_cpu_count() -> int:
    """The cores this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=package_doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for memory-real.*")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-memory"), help="slice exports go here")
    parser.add_argument("--overhead-gib", type=float, default=DEFAULT_OVERHEAD_GIB,
                        help="runtime memory per encoder process, GiB (default: %(default)s)")  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="export the slices again even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    result = run(args.out, args.workdir, args.overhead_gib, args.rebuild)
    for d in result["deployments"]:
        verdict = "fits" if d["fits"] else "does NOT fit"
        print(f"{d['precision']:5} {d['basis']:9} {d['total'] / GB:6.3f} GB of {d['limit'] / GB:g} GB: {verdict}")
    print(args.out / "memory-real.md")
    return 0
