"""Each rendered `model.py`, driven with a fake `triton_python_backend_utils` (no server)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from tests import fake_pb_utils as pb
from tests.images import encode, png_bomb, square_chart


def model_args(model_dir: Path) -> dict[str, str]:
    """What Triton passes to `initialize`: the config as JSON plus where the model lives."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(model_dir),
        "model_version": "1",
        "model_name": config.name,
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    }


def load_model(model_dir: Path):
    """Import model.py the way the stub does: its version folder first on sys.path."""
    sys.modules["triton_python_backend_utils"] = pb
    version = str(model_dir / "1")
    sys.path.insert(0, version)
    try:
        spec = importlib.util.spec_from_file_location(f"model_{model_dir.name}", model_dir / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(version)
    model = module.TritonPythonModel()
    model.initialize(model_args(model_dir))
    return model


def strings(*items: bytes) -> np.ndarray:
    return np.array([[i] for i in items], dtype=object)


@pytest.fixture(scope="module")
def preprocess(tiny_repository):
    return load_model(tiny_repository / "colqwen2_preprocess")


def test_preprocess_answers_each_request_on_its_own(preprocess):
    png = encode(square_chart(448), "PNG")
    requests = [
        pb.InferenceRequest({"IMAGE": strings(png)}),
        pb.InferenceRequest({"IMAGE": strings(b"not an image")}),
        pb.InferenceRequest({"TEXT": strings(b"lego price", b"a longer query about lego prices")}),
        pb.InferenceRequest({"IMAGE": strings(png_bomb())}),
        pb.InferenceRequest({}),
        pb.InferenceRequest({"IMAGE": strings(png, b"")}),
    ]
    ok, garbage, text, bomb, nothing, second_empty = preprocess.execute(requests)
    assert np.array_equal(ok.output("PIXEL_VALUES")[0], np.asarray(square_chart(448)))
    assert ok.output("PIXEL_VALUES").dtype == np.uint8
    assert garbage.error().code() == pb.TritonError.INVALID_ARG
    assert "not a recognised image" in garbage.error().message()
    ids, mask = text.output("INPUT_IDS"), text.output("ATTENTION_MASK")
    assert ids.shape == mask.shape and ids.dtype == np.int64 and mask[0, 0] == 0 and mask[1].all()
    assert "refused before decoding" in bomb.error().message()
    assert "exactly one of IMAGE" in nothing.error().message()
    assert second_empty.error().message().startswith("item 1: empty image")


def test_preprocess_reads_its_parameters(preprocess, tiny_artifacts):
    assert preprocess.preprocess.image_size == 448
    assert preprocess.preprocess.tokenizer.max_tokens == 512


@pytest.mark.parametrize("variant", ["fp32", "int8_dynamic"])
def test_image_encoder_isolates_a_malformed_request(tiny_repository, variant):
    model = load_model(tiny_repository / f"colqwen2_image_encoder_{variant}")
    pixels = np.asarray(square_chart(448))[None]
    good, bad, again = model.execute(
        [
            pb.InferenceRequest({"PIXEL_VALUES": pixels}),
            pb.InferenceRequest({"PIXEL_VALUES": pixels[:, :224, :224]}),
            pb.InferenceRequest({"PIXEL_VALUES": pixels}),
        ]
    )
    assert good.output("EMBEDDINGS").shape == (1, 271, 128) and good.output("EMBEDDINGS").dtype == np.float32
    assert good.output("NUM_VECTORS").tolist() == [[271]] and good.output("NUM_VECTORS").dtype == np.int32
    assert np.allclose(np.linalg.norm(good.output("POOLED"), axis=-1), 1, atol=1e-5)
    assert bad.error().code() == pb.TritonError.INVALID_ARG and "PIXEL_VALUES must be uint8" in bad.error().message()
    assert np.array_equal(good.output("EMBEDDINGS"), again.output("EMBEDDINGS"))
    model.finalize()


def test_query_encoder_batches_ragged_requests(tiny_repository, preprocess):
    model = load_model(tiny_repository / "colqwen2_query_encoder_fp32")
    texts = [b"lego", b"a much longer query about the price of lego sets"]
    tokenized = preprocess.execute([pb.InferenceRequest({"TEXT": strings(t)}) for t in texts])
    requests = [
        pb.InferenceRequest({"INPUT_IDS": r.output("INPUT_IDS"), "ATTENTION_MASK": r.output("ATTENTION_MASK")})
        for r in tokenized
    ]
    short, long = model.execute(requests)
    alone = model.execute(requests[:1])[0]
    assert short.output("NUM_VECTORS")[0, 0] == requests[0].inputs["INPUT_IDS"].as_numpy().shape[1]
    assert np.abs(short.output("EMBEDDINGS") - alone.output("EMBEDDINGS")).max() < 1e-5
    assert long.output("EMBEDDINGS").shape[1] > short.output("EMBEDDINGS").shape[1]
    broken = pb.InferenceRequest({"INPUT_IDS": np.ones((1, 4), np.int64), "ATTENTION_MASK": np.array([[1, 0, 1, 1]])})
    assert "padding on the left" in model.execute([broken])[0].error().message()
