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

from export.sample_images import keepa_chart, product_image
from export.validate import per_token_cosine
from tests.images import encode, every_format, png_bomb, truncated_png

# What users send: Keepa charts at their two sizes, a photo above the pixel cap, a tall banner, a
# thumbnail below the minimum, an odd size, an extreme strip and a single pixel.
SIZES = [(500, 200), (1000, 400), (1500, 1500), (300, 900), (40, 40), (517, 333), (1600, 120), (1, 1)]


def sample(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    return keepa_chart(seed, w, h) if w >= 2 * h and h >= 100 else product_image(seed, w, h)


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


OUTPUTS = ("embeddings", "num_vectors", "pooled", "grid")


def infer(client, model: str, tensor) -> dict[str, np.ndarray]:
    result = client.infer(model, [tensor])
    return {k: result.as_numpy(k) for k in OUTPUTS if result.as_numpy(k) is not None}


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


@pytest.fixture(scope="module")
def references(tiny_reference) -> dict[tuple[int, int], np.ndarray]:
    return {size: reference_image(tiny_reference, sample(size)) for size in SIZES}


@pytest.mark.parametrize(("model", "cos_min", "cos_mean"), [("colqwen2", 0.999, 0.999), ("colqwen2_int8", 0.9, 0.995)])
def test_every_size_gets_colpalis_vectors_at_native_resolution(http, references, model, cos_min, cos_mean):
    """fp32 reaches cosine 1.000000 (max abs about 3e-7) on every size; int8 its export thresholds."""
    for size in SIZES:
        out = infer(http, model, image_input(httpclient, encode(sample(size), "PNG")))
        ref = references[size]
        n = int(out["num_vectors"][0, 0])
        assert n == len(ref) and out["embeddings"].shape == (1, n, 128), size
        assert out["embeddings"].dtype == np.float32
        rows, cols = out["grid"][0].tolist()
        assert rows * cols + 15 == n, size  # the grid of visual tokens, plus the prompt's 15 tokens
        cos = per_token_cosine(out["embeddings"][0], ref)
        assert cos.min() >= cos_min and cos.mean() >= cos_mean, (size, cos.min(), cos.mean())
        if model == "colqwen2":
            assert np.abs(out["embeddings"][0] - ref).max() <= 1e-4, size
        assert np.allclose(np.linalg.norm(out["embeddings"][0], axis=-1), 1, atol=1e-4)  # L2-normalised vectors
        pooled = ref.mean(0) / np.linalg.norm(ref.mean(0))
        assert out["pooled"].shape == (1, 128) and float(out["pooled"][0] @ pooled) > 0.99


def through(client, variant: str, data: bytes) -> np.ndarray:
    """preprocess -> the encoder of one variant, model by model (the extra variants have no ensemble)."""
    pre = client.infer("colqwen2_preprocess", [image_input(httpclient, data, "IMAGE")])
    inputs = []
    for name, kind in (("INPUT_IDS", "INT64"), ("ATTENTION_MASK", "INT64"), ("PATCHES", "UINT8"), ("GRID", "INT32")):
        array = pre.as_numpy(name)
        tensor = httpclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return client.infer(f"colqwen2_encoder_{variant}", inputs).as_numpy("EMBEDDINGS")[0]


@pytest.mark.parametrize(("variant", "cos_mean"), [("fp16", 0.999), ("int8", 0.995)])
def test_gpu_variants_match_colpali_when_run_on_cpu(http, references, variant, cos_mean):
    """The fp16 and QDQ int8 encoders a GPU host serves, run here on ONNX Runtime's CPU provider."""
    for size in SIZES[:4]:
        got = through(http, variant, encode(sample(size), "PNG"))
        cos = per_token_cosine(got, references[size])
        assert cos.mean() >= cos_mean, (size, cos.mean())
        if variant == "fp16":
            assert cos.min() >= 0.99


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
            results.append({k: result.as_numpy(k) for k in OUTPUTS if result.as_numpy(k) is not None})
        except InferenceServerException as exc:
            results.append(exc)
    return results


def test_a_burst_of_mixed_sizes_gets_what_each_image_gets_alone(http, triton_server):
    """Every size twice, all in flight at once: the encoder batches images of different grids (max abs
    against alone is about 1e-7 at fp32 here; the bound is 1e-4)."""
    payloads = [encode(sample(size, seed), "PNG") for seed in (1, 2) for size in SIZES]
    alone = [infer(http, "colqwen2", image_input(httpclient, p)) for p in payloads]
    before = {m: batch_sizes(http, m) for m in ("colqwen2_encoder_fp32",)}
    results = burst(http, "colqwen2", payloads, image_input)
    for got, single in zip(results, alone, strict=True):
        assert got["num_vectors"].tolist() == single["num_vectors"].tolist()
        assert got["grid"].tolist() == single["grid"].tolist()
        assert np.abs(got["embeddings"] - single["embeddings"]).max() <= 1e-4
        assert np.abs(got["pooled"] - single["pooled"]).max() <= 1e-4
    for model, earlier in before.items():
        after = batch_sizes(http, model)
        batched = {size: n - earlier.get(size, 0) for size, n in after.items() if size > 1 and n > earlier.get(size, 0)}
        assert batched, f"{model}: no execution with batch size > 1 under {len(payloads)} concurrent requests"


def batch_sizes(http, model: str) -> dict[int, int]:
    stats = http.get_inference_statistics(model)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_several_items_in_one_request_equal_one_by_one(http):
    items = [encode(sample(size, seed=i), "PNG") for i, size in enumerate(SIZES[:3])]
    together = infer(http, "colqwen2", image_input(httpclient, items))
    counts = together["num_vectors"][:, 0]
    assert together["embeddings"].shape == (3, counts.max(), 128) and len(set(counts)) == 3
    for i, item in enumerate(items):
        alone = infer(http, "colqwen2", image_input(httpclient, item))
        n = counts[i]
        assert alone["num_vectors"][0, 0] == n and (together["embeddings"][i, n:] == 0).all()
        assert np.abs(together["embeddings"][i, :n] - alone["embeddings"][0]).max() <= 1e-5
        assert together["grid"][i].tolist() == alone["grid"][0].tolist()


# --- protocols -----------------------------------------------------------------------------------------


def test_http_and_grpc_return_identical_results(http, grpc):
    data = encode(sample((1000, 400), seed=9), "JPEG", quality=90)
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
    out = infer(http, "colqwen2_int8", image_input(httpclient, every_format(448)[fmt]))
    assert out["embeddings"].shape == (1, 16 * 16 + 15, 128) and out["grid"].tolist() == [[16, 16]]


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_images_fail_alone_in_a_concurrent_burst(http, triton_server):
    good = [encode(sample(SIZES[i % 4], seed=20 + i), "PNG") for i in range(7)]
    strip = encode(Image.new("RGB", (2010, 10), (200, 0, 0)), "PNG")  # 201:1, over the processor's 200:1
    payloads = [*good[:3], truncated_png(448), strip, *good[3:]]
    results = burst(http, "colqwen2", payloads, image_input)
    corrupt, extreme = results[3], results[4]
    assert isinstance(corrupt, InferenceServerException)
    assert corrupt.status() == "400" and "corrupt or truncated PNG" in corrupt.message()
    assert isinstance(extreme, InferenceServerException) and extreme.status() == "400"
    assert "2010x10, an aspect ratio of 201.0:1; ColQwen2 takes at most 200:1" in extreme.message()
    assert all(isinstance(r, dict) and r["num_vectors"][0, 0] > 15 for i, r in enumerate(results) if i not in (3, 4))
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("colqwen2")
    assert infer(http, "colqwen2", image_input(httpclient, good[0]))["num_vectors"][0, 0] > 15


def test_a_burst_of_images_at_the_pixel_cap_is_answered_in_bounded_calls(http, triton_server):
    """32 photos far above the cap at once: each gets 768 visual tokens; the vision encoder never runs
    more than its patch budget (4096 on a CPU host) per call, so memory stays bounded."""
    payloads = [encode(product_image(i, 1600, 1200), "JPEG", quality=90) for i in range(32)]
    before = batch_sizes(http, "colqwen2_encoder_fp32")
    results = burst(http, "colqwen2", payloads, image_input)
    assert all(isinstance(r, dict) and r["grid"][0, 0] * r["grid"][0, 1] <= 768 for r in results)
    assert {int(r["num_vectors"][0, 0]) for r in results} == {24 * 32 + 15}
    after = batch_sizes(http, "colqwen2_encoder_fp32")
    assert sum(after.values()) > sum(before.values())
    assert http.is_server_ready()


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
    for payload in (b"", png_bomb(), truncated_png(448)):
        with pytest.raises(InferenceServerException):
            http.infer("colqwen2", [image_input(httpclient, payload)])
    assert http.is_server_ready()
    for model in ("colqwen2", "colqwen2_int8", "colqwen2_query", "colqwen2_query_int8"):
        assert http.is_model_ready(model), model
    assert infer(http, "colqwen2_query", text_input(httpclient, ["still fine"]))["num_vectors"][0, 0] > 10
