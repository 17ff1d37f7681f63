"""The rendered repository on a real Triton server, through tritonclient HTTP and gRPC.

One server per test session (the `triton_server` fixture); nothing here fakes Triton.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.validate import per_token_cosine
from tests.images import encode, every_format, png_bomb, square_chart, truncated_png

S = 448
IMAGE_TOKENS = 15 + (S // 28) ** 2


@pytest.fixture(scope="module")
def http(triton_server):
    with httpclient.InferenceServerClient(triton_server.http_url, concurrency=16, network_timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def grpc(triton_server):
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        yield client


def image_input(module, data: bytes | list[bytes], name: str = "image"):
    items = data if isinstance(data, list) else [data]
    tensor = module.InferInput(name, [len(items), 1], "BYTES")
    array = np.array([[d] for d in items], dtype=object)
    if module is httpclient:
        tensor.set_data_from_numpy(array, binary_data=True)  # JSON cannot carry raw bytes
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def text_input(module, texts: list[str]):
    return image_input(module, [t.encode() for t in texts], name="text")


def infer(client, model: str, tensor) -> dict[str, np.ndarray]:
    result = client.infer(model, [tensor])
    return {k: result.as_numpy(k) for k in ("embeddings", "num_vectors", "pooled")}


def reference_image(tiny_reference, image: Image.Image) -> np.ndarray:
    with torch.no_grad():
        batch = tiny_reference.processor.process_images([image])
        return tiny_reference.model(**batch)[0].float().numpy()


def reference_queries(tiny_reference, texts: list[str]) -> list[np.ndarray]:
    with torch.no_grad():
        batch = tiny_reference.processor.process_queries(texts)
        out = tiny_reference.model(**batch).float().numpy()
    return [row[mask.bool().numpy()] for row, mask in zip(out, batch["attention_mask"], strict=True)]


# --- parity with colpali-engine -------------------------------------------------------------------


@pytest.mark.parametrize(("model", "cos_min", "cos_mean"), [("colqwen2", 0.999, 0.999), ("colqwen2_int8", 0.9, 0.995)])
def test_png_through_the_image_ensemble_matches_colpali(http, tiny_reference, model, cos_min, cos_mean):
    chart = square_chart(S)
    out = infer(http, model, image_input(httpclient, encode(chart, "PNG")))
    ref = reference_image(tiny_reference, chart)
    assert out["embeddings"].shape == (1, IMAGE_TOKENS, 128) and out["embeddings"].dtype == np.float32
    assert out["num_vectors"].tolist() == [[IMAGE_TOKENS]]
    cos = per_token_cosine(out["embeddings"][0], ref)
    assert cos.min() >= cos_min and cos.mean() >= cos_mean, (cos.min(), cos.mean())
    assert np.allclose(np.linalg.norm(out["embeddings"][0], axis=-1), 1, atol=1e-4)  # L2-normalised vectors
    pooled = ref.mean(0) / np.linalg.norm(ref.mean(0))
    assert out["pooled"].shape == (1, 128) and float(out["pooled"][0] @ pooled) > 0.99


@pytest.mark.parametrize(("variant", "cos_mean"), [("fp16", 0.999), ("int8", 0.995)])
def test_gpu_variants_match_colpali_when_run_on_cpu(http, tiny_reference, variant, cos_mean):
    """The fp16 and QDQ int8 encoders a GPU host serves, run here on ONNX Runtime's CPU provider."""
    chart = square_chart(S, seed=5)
    tensor = httpclient.InferInput("PIXEL_VALUES", [1, S, S, 3], "UINT8")
    tensor.set_data_from_numpy(np.asarray(chart)[None], binary_data=True)
    result = http.infer(f"colqwen2_image_encoder_{variant}", [tensor])
    cos = per_token_cosine(result.as_numpy("EMBEDDINGS")[0], reference_image(tiny_reference, chart))
    assert cos.mean() >= cos_mean, cos.mean()
    if variant == "fp16":
        assert cos.min() >= 0.999


@pytest.mark.parametrize(("model", "cos_mean"), [("colqwen2_query", 0.999), ("colqwen2_query_int8", 0.995)])
def test_queries_match_colpali(http, tiny_reference, model, cos_mean):
    texts = ["lego star wars price drop", "Keepa chart of a coffee grinder, 2024", "x"]
    out = infer(http, model, text_input(httpclient, texts))
    refs = reference_queries(tiny_reference, texts)
    for i, ref in enumerate(refs):
        n = int(out["num_vectors"][i, 0])
        assert n == len(ref)
        assert (out["embeddings"][i, n:] == 0).all()
        cos = per_token_cosine(out["embeddings"][i, :n], ref)
        assert cos.mean() >= cos_mean and (model.endswith("int8") or cos.min() >= 0.999), (cos.min(), cos.mean())


# --- batching ------------------------------------------------------------------------------------------


def burst(http, model: str, payloads: list, make_input) -> list:
    """Send every payload as its own request, all at once; results or exceptions, in order."""
    pending = [http.async_infer(model, [make_input(httpclient, p)]) for p in payloads]
    results = []
    for request in pending:
        try:
            result = request.get_result()
            results.append({k: result.as_numpy(k) for k in ("embeddings", "num_vectors", "pooled")})
        except InferenceServerException as exc:
            results.append(exc)
    return results


def test_batch_invariance_and_real_dynamic_batching(http, triton_server):
    target = encode(square_chart(S, seed=7), "PNG")
    others = [encode(square_chart(S, seed=100 + i), "PNG") for i in range(15)]
    alone = infer(http, "colqwen2", image_input(httpclient, target))
    before = batch_sizes(http, "colqwen2_image_encoder_fp32")
    results = burst(http, "colqwen2", [*others[:8], target, *others[8:]], image_input)
    assert np.abs(results[8]["embeddings"] - alone["embeddings"]).max() <= 1e-5
    assert np.abs(results[8]["pooled"] - alone["pooled"]).max() <= 1e-5
    after = batch_sizes(http, "colqwen2_image_encoder_fp32")
    batched = {size: n - before.get(size, 0) for size, n in after.items() if size > 1 and n > before.get(size, 0)}
    assert batched, f"no execution with batch size > 1 under 16 concurrent requests: {after}"


def batch_sizes(http, model: str) -> dict[int, int]:
    stats = http.get_inference_statistics(model)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_several_items_in_one_request_equal_one_by_one(http):
    items = [encode(square_chart(S, seed=i), "PNG") for i in (1, 2, 3)]
    together = infer(http, "colqwen2", image_input(httpclient, items))
    assert together["embeddings"].shape == (3, IMAGE_TOKENS, 128)
    for i, item in enumerate(items):
        alone = infer(http, "colqwen2", image_input(httpclient, item))
        assert np.abs(together["embeddings"][i] - alone["embeddings"][0]).max() <= 1e-5


# --- protocols -----------------------------------------------------------------------------------------


def test_http_and_grpc_return_identical_results(http, grpc):
    data = encode(square_chart(S, seed=9), "JPEG", quality=90)
    over_http = infer(http, "colqwen2", image_input(httpclient, data))
    over_grpc = infer(grpc, "colqwen2", image_input(grpcclient, data))
    for key in over_http:
        assert np.array_equal(over_http[key], over_grpc[key]), key
    texts = ["price history of a kettle", "lego"]
    q_http = infer(http, "colqwen2_query", text_input(httpclient, texts))
    q_grpc = infer(grpc, "colqwen2_query", text_input(grpcclient, texts))
    for key in q_http:
        assert np.array_equal(q_http[key], q_grpc[key]), key


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_format_is_served(http, fmt):
    out = infer(http, "colqwen2_int8", image_input(httpclient, every_format(S)[fmt]))
    assert out["embeddings"].shape == (1, IMAGE_TOKENS, 128)


def test_any_aspect_ratio_is_letterboxed(http):
    wide = encode(square_chart(S).resize((1200, 300)), "PNG")
    assert infer(http, "colqwen2", image_input(httpclient, wide))["num_vectors"].tolist() == [[IMAGE_TOKENS]]


# --- bad input ------------------------------------------------------------------------------------------


def test_a_corrupt_image_fails_alone_in_a_concurrent_burst(http, triton_server):
    good = [encode(square_chart(S, seed=20 + i), "PNG") for i in range(7)]
    payloads = [*good[:3], truncated_png(S), *good[3:]]
    results = burst(http, "colqwen2", payloads, image_input)
    bad = results[3]
    assert isinstance(bad, InferenceServerException)
    assert bad.status() == "400" and "corrupt or truncated PNG" in bad.message()
    assert all(
        isinstance(r, dict) and r["embeddings"].shape == (1, IMAGE_TOKENS, 128) for i, r in enumerate(results) if i != 3
    )
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("colqwen2")
    assert infer(http, "colqwen2", image_input(httpclient, good[0]))["num_vectors"].tolist() == [[IMAGE_TOKENS]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty image"),
        (b"%PDF-1.7 not an image", "not a recognised image"),
        (png_bomb(), "refused before decoding"),
    ],
    ids=["empty", "non-image", "decompression-bomb"],
)
def test_bad_images_get_invalid_arg_over_both_protocols(http, grpc, payload, message):
    with pytest.raises(InferenceServerException, match=message) as over_http:
        http.infer("colqwen2", [image_input(httpclient, payload)])
    assert over_http.value.status() == "400"
    with pytest.raises(InferenceServerException, match=message) as over_grpc:
        grpc.infer("colqwen2", [image_input(grpcclient, payload)])
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("text", "message"),
    [("lego " * 600, r"tokens .* over the limit of 512 \(max_query_tokens\)"), ("   ", "empty query")],
    ids=["too-long", "empty"],
)
def test_bad_queries_get_invalid_arg(http, text, message):
    with pytest.raises(InferenceServerException, match=message) as info:
        http.infer("colqwen2_query", [text_input(httpclient, [text])])
    assert info.value.status() == "400"


def test_non_utf8_query_is_refused(http):
    with pytest.raises(InferenceServerException, match="not valid UTF-8"):
        http.infer("colqwen2_query", [image_input(httpclient, b"caf\xe9", name="text")])


def test_server_stays_healthy_after_bad_input(http):
    for payload in (b"", png_bomb(), truncated_png(S)):
        with pytest.raises(InferenceServerException):
            http.infer("colqwen2", [image_input(httpclient, payload)])
    assert http.is_server_ready()
    for model in ("colqwen2", "colqwen2_int8", "colqwen2_query", "colqwen2_query_int8"):
        assert http.is_model_ready(model), model
    assert infer(http, "colqwen2_query", text_input(httpclient, ["still fine"]))["num_vectors"][0, 0] > 10
