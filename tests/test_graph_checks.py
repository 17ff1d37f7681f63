"""The graph checks refuse what TensorRT cannot build."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from export.errors import GraphCheckError
from export.graph_checks import check_graph


def _save(tmp_path, nodes, opset=18, name="g.onnx", inputs=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    graph = helper.make_graph(nodes, "g", inputs or [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_nonzero_is_refused(tmp_path):
    path = _save(tmp_path, [helper.make_node("NonZero", ["x"], ["y"])])
    with pytest.raises(GraphCheckError, match=r"forbidden ops.*NonZero"):
        check_graph(path)


def test_old_opset_is_refused(tmp_path):
    path = _save(tmp_path, [helper.make_node("Shape", ["x"], ["y"])], opset=13)
    with pytest.raises(GraphCheckError, match="opset 13 is below 17"):
        check_graph(path)


def test_int64_cumsum_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    axis = helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [], [0]))
    path = _save(tmp_path, [axis, helper.make_node("CumSum", ["x", "axis"], ["y"])], inputs=[x])
    with pytest.raises(GraphCheckError, match="int64 CumSum"):
        check_graph(path)


def test_clean_graph_passes(tmp_path):
    report = check_graph(_save(tmp_path, [helper.make_node("Shape", ["x"], ["y"])]))
    assert report.op_counts == {"Shape": 1} and report.opset == 18
