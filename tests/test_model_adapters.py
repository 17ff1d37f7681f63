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
    png = encode(square_chart(448).resize((500, 200)), "PNG")
    requests = [
        pb.InferenceRequest({"IMAGE": strings(png)}),
        pb.InferenceRequest({"IMAGE": strings(b"not an image")}),
        pb.InferenceRequest({"TEXT": strings(b"lego price", b"a longer query about lego prices")}),
        pb.InferenceRequest({"IMAGE": strings(png_bomb())}),
        pb.InferenceRequest({}),
        pb.InferenceRequest({"IMAGE": strings(png, b"")}),
        pb.InferenceRequest({"IMAGE": strings(png, encode(square_chart(448).resize((40, 40)), "PNG"))}),
    ]
    ok, garbage, text, bomb, nothing, second_empty, two = preprocess.execute(requests)
    assert ok.output("GRID").tolist() == [[7, 18]] and ok.output("GRID").dtype == np.int32
    assert ok.output("PATCHES").shape == (1, 7 * 18 * 4, 588) and ok.output("PATCHES").dtype == np.uint8
    assert ok.output("INPUT_IDS").shape == (1, 7 * 18 + 15) and ok.output("ATTENTION_MASK").all()
    assert garbage.error().code() == pb.TritonError.INVALID_ARG
    assert "not a recognised image" in garbage.error().message()
    ids, mask = text.output("INPUT_IDS"), text.output("ATTENTION_MASK")
    assert ids.shape == mask.shape and ids.dtype == np.int64 and mask[0, 0] == 0 and mask[1].all()
    assert "refused before decoding" in bomb.error().message()
    assert "exactly one of IMAGE" in nothing.error().message()
    assert second_empty.error().message().startswith("item 1: empty image")
    assert two.output("GRID").tolist() == [[7, 18], [2, 2]]  # items of one request padded to the largest
    assert two.output("PATCHES").shape == (2, 504, 588) and not two.output("PATCHES")[1, 16:].any()
    assert two.output("ATTENTION_MASK")[1].sum() == 4 + 15


def test_preprocess_reads_its_parameters(preprocess):
    resolution = preprocess.preprocess.resolution
    assert (resolution.fixed_size, resolution.limits.min_pixels, resolution.limits.max_pixels) == (0, 3136, 602112)
    assert preprocess.preprocess.tokenizer.max_tokens == 512


def encoder_request(preprocessed) -> pb.InferenceRequest:
    """A preprocess response, as the ensemble hands it to the encoder."""
    names = [
        n
        for n in ("INPUT_IDS", "ATTENTION_MASK", "PATCHES", "GRID")
        if n in {t.name() for t in preprocessed.output_tensors()}
    ]
    return pb.InferenceRequest({n: preprocessed.output(n) for n in names})


def answered(model, requests: list[pb.InferenceRequest]) -> list[pb.InferenceResponse]:
    """Run the encoder's execute() (it answers through each request's sender and returns None): the responses
    in request order, each sent exactly once."""
    assert model.execute(requests) is None
    return [r.sender.sent[0] for r in requests]


@pytest.mark.parametrize("variant", ["fp32", "int8_dynamic"])
def test_encoder_serves_images_and_queries_and_isolates_a_bad_request(tiny_repository, preprocess, variant):
    model = load_model(tiny_repository / f"colqwen2_encoder_{variant}")
    chart, tall = (encode(square_chart(448).resize(size), "PNG") for size in ((500, 200), (300, 900)))
    texts = [b"lego", b"a much longer query about the price of lego sets"]
    inputs = [{"IMAGE": strings(chart)}, {"IMAGE": strings(tall)}, *({"TEXT": strings(t)} for t in texts)]
    small, large, short, long = (
        encoder_request(r) for r in preprocess.execute([pb.InferenceRequest(i) for i in inputs])
    )
    broken = pb.InferenceRequest({**small.inputs_as_arrays(), "PATCHES": small.inputs["PATCHES"].as_numpy()[:, :10]})
    image, bad, other, query, longer = answered(model, [small, broken, large, short, long])
    assert image.output("NUM_VECTORS").tolist() == [[7 * 18 + 15]] and image.output("EMBEDDINGS").dtype == np.float32
    assert other.output("NUM_VECTORS").tolist() == [[32 * 11 + 15]]
    assert np.allclose(np.linalg.norm(image.output("POOLED"), axis=-1), 1, atol=1e-5)
    assert image.output("PROVIDER").tolist() == [[b"cpu"]]  # what the session really runs on, for health checks
    assert bad.error().code() == pb.TritonError.INVALID_ARG and "needs 504 patches" in bad.error().message()
    assert query.output("NUM_VECTORS")[0, 0] == short.inputs["INPUT_IDS"].as_numpy().shape[1]
    alone = answered(model, [encoder_request(preprocess.execute([pb.InferenceRequest(inputs[2])])[0])])[0]
    tol = 1e-5 if variant == "fp32" else 2e-2  # dynamic int8 scales activations per call
    assert np.abs(query.output("EMBEDDINGS") - alone.output("EMBEDDINGS")).max() < tol
    assert longer.output("EMBEDDINGS").shape[1] > query.output("EMBEDDINGS").shape[1]
    broken_mask = pb.InferenceRequest(
        {"INPUT_IDS": np.ones((1, 4), np.int64), "ATTENTION_MASK": np.array([[1, 0, 1, 1]])}
    )
    assert "padding on the left" in answered(model, [broken_mask])[0].error().message()
    model.finalize()


def test_the_encoder_answers_every_request_even_when_its_runner_breaks(tiny_repository, preprocess):
    model = load_model(tiny_repository / "colqwen2_encoder_fp32")
    query = encoder_request(preprocess.execute([pb.InferenceRequest({"TEXT": strings(b"lego")})])[0])

    def broken(_requests):
        raise MemoryError("out of memory")

    model.runner.run = broken
    (answer,) = answered(model, [query])
    assert answer.error().code() == pb.TritonError.INTERNAL
    assert "MemoryError: out of memory" in answer.error().message()
    model.finalize()
