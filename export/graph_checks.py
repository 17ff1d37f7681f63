"""Checks every exported graph must pass before it is validated numerically."""

from __future__ import annotations

import collections
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import GraphCheckError
from .spec import FORBIDDEN_OPS

_STANDARD_DOMAINS = {"", "ai.onnx"}


@dataclass
class GraphReport:
    path: str
    opset: int
    nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    external_data: bool = False


def check_graph(path: Path) -> GraphReport:
    """onnx.checker, opset >= 17, standard domain only, no forbidden ops, no int64 CumSum."""
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        raise GraphCheckError(f"{path.name}: onnx.checker failed: {exc}") from None
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)
    if opset < 17:
        raise GraphCheckError(f"{path.name}: opset {opset} is below 17")
    nodes = list(model.graph.node)
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in _STANDARD_DOMAINS})
    if foreign:
        raise GraphCheckError(f"{path.name}: non-standard ops {foreign}")
    counts = collections.Counter(n.op_type for n in nodes)
    bad = sorted(FORBIDDEN_OPS & counts.keys())
    if bad:
        raise GraphCheckError(f"{path.name}: forbidden ops for TensorRT: {bad}")
    if "CumSum" in counts:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
        if any(types.get(n.input[0]) == onnx.TensorProto.INT64 for n in nodes if n.op_type == "CumSum"):
            raise GraphCheckError(f"{path.name}: int64 CumSum (cast to int32 first)")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    return GraphReport(str(path.name), opset, len(nodes), dict(sorted(counts.items())), external)


def polygraphy_inspect(path: Path, out_file: Path) -> None:
    """Run `polygraphy inspect model` (needs no GPU) and keep its summary next to the graph."""
    # polygraphy has no `python -m` entry point; its script sits beside this interpreter.
    exe = Path(sys.executable).parent / "polygraphy"
    cmd = [str(exe) if exe.exists() else "polygraphy", "inspect", "model", str(path)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError:
        raise GraphCheckError("polygraphy is not installed (run `make setup`)") from None
    out_file.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise GraphCheckError(f"{path.name}: polygraphy inspect model failed (see {out_file.name})")
