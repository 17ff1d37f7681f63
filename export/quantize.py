"""INT8 forms of an exported fp32 graph.

- QDQ (static): per-channel symmetric int8 weights and calibrated symmetric int8 activations on
  the weight matmuls (the patch embedding included) only. Attention's activation x activation
  matmuls, norms and softmax stay in float: quantizing them costs far more accuracy than it saves.
  This is the form TensorRT builds INT8 kernels from; ONNX Runtime runs it on any provider.
- Dynamic: MatMulInteger with weights quantized ahead and activations at run time. ONNX Runtime's
  CUDA provider sends these nodes back to the CPU, so this form is for CPU hosts only.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)


def weight_matmul_nodes(model_path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight, and of Conv nodes."""
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [
        n.name for n in model.graph.node if (n.op_type == "MatMul" and n.input[1] in weights) or n.op_type == "Conv"
    ]


def _preprocess(src: Path, dst: Path, external: bool) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=external)


def quantize_qdq(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]], external: bool) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with _preprocessed(src, dst, external) as pre:
        quantize_static(
            str(pre),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            nodes_to_quantize=weight_matmul_nodes(pre),
            op_types_to_quantize=["MatMul"],  # calibrate MatMul inputs only, not every float tensor
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,  # percentile/entropy were no better here
            use_external_data_format=external,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return dst


def quantize_dynamic_int8(src: Path, dst: Path, external: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _preprocessed(src, dst, external) as pre:
        quantize_dynamic(
            str(pre),
            str(dst),
            weight_type=QuantType.QInt8,
            nodes_to_quantize=weight_matmul_nodes(pre),
            op_types_to_quantize=["MatMul"],
            use_external_data_format=external,
        )
    return dst


# A token embedding this large or larger is stored in float16 in the INT8 graphs (Gather is not
# quantized, and the real vocabulary's 151936 x 1536 table is 0.93 GB in float32: a third of an
# INT8 deployment's weights). A row lookup in float16 is exact to float16 rounding.
EMBEDDING_MIN_ELEMENTS = 1_000_000


def half_embeddings(path: Path, external: bool, min_elements: int = EMBEDDING_MIN_ELEMENTS) -> list[str]:
    """Store large Gather tables in float16 with a Cast back to float32 after the lookup; returns their names."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    converted = []
    for node in list(model.graph.node):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or table.data_type != onnx.TensorProto.FLOAT or np.prod(table.dims) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(table).astype(np.float16), table.name)
        table.CopyFrom(half)
        lookup = node.output[0]
        node.output[0] = f"{lookup}_float16"
        cast = helper.make_node("Cast", [node.output[0]], [lookup], to=onnx.TensorProto.FLOAT, name=f"{node.name}_cast")
        model.graph.node.insert(list(model.graph.node).index(node) + 1, cast)
        converted.append(table.name)
    if converted:
        for value in list(model.graph.value_info):  # the lookup's float32 type no longer holds for its new name
            if value.name in {n.output[0] for n in model.graph.node if n.op_type == "Gather"}:
                model.graph.value_info.remove(value)
        data = path.name + ".data"
        if external:
            (path.parent / data).unlink(missing_ok=True)
        onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=data)
    return converted


@contextmanager
def _preprocessed(src: Path, dst: Path, external: bool) -> Iterator[Path]:
    """`src` prepared for quantization (`_preprocess`) in a temporary folder beside `dst`."""
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        _preprocess(src, pre, external)
        yield pre
