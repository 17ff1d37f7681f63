"""Rendering the `${var}` templates into a model repository Triton accepts."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from model_repository.budgets import GPU_MEMORY, PROMPT_TOKENS, SESSION_BUDGETS, gpu_call_budgets
from model_repository.render import RenderError, RenderOptions, fill_template, render


def configs(repository) -> dict[str, model_config_pb2.ModelConfig]:
    return {
        p.parent.name: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
        for p in repository.glob("*/config.pbtxt")
    }


def test_fill_template_refuses_a_missing_value():
    assert fill_template("a: ${x}", {"x": 1}) == "a: 1"
    with pytest.raises(RenderError, match=r"t.pbtxt: no value for \$\{y\}"):
        fill_template("a: ${x} ${y}", {"x": 1}, "t.pbtxt")


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_rendered_configs_are_complete_and_consistent(tiny_artifacts, tmp_path, device):
    repo = render(RenderOptions(tiny_artifacts, tmp_path / "repo", device=device))
    models = configs(repo)
    assert "${" not in "".join(p.read_text() for p in repo.glob("*/config.pbtxt"))
    full = "fp16" if device == "gpu" else "fp32"
    # One precision by default: one encoder model (vision and text graphs), shared by both ensembles.
    assert set(models) == {"colqwen2", "colqwen2_query", "colqwen2_preprocess", f"colqwen2_encoder_{full}"}
    for name, config in models.items():
        assert config.name == name and config.max_batch_size >= 32
        if config.platform == "ensemble":
            for step in config.ensemble_scheduling.step:
                assert step.model_name in models, f"{name} refers to a model that is not rendered"
            assert (repo / name / "1").is_dir()
        else:
            assert config.HasField("dynamic_batching"), name
            assert (repo / name / "1" / "model.py").exists()
    image_steps = [step.model_name for step in models["colqwen2"].ensemble_scheduling.step]
    query_steps = [step.model_name for step in models["colqwen2_query"].ensemble_scheduling.step]
    assert image_steps[-1] == query_steps[-1] == f"colqwen2_encoder_{full}"
    assert [o.name for o in models["colqwen2"].output] == [
        "embeddings", "num_vectors", "pooled", "execution_provider", "grid"
    ]  # fmt: skip
    assert models["colqwen2"].parameters["precision"].string_value == full
    encoder = models[f"colqwen2_encoder_{full}"]
    assert encoder.instance_group[0].kind == (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if device == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    pre = models["colqwen2_preprocess"].parameters
    assert pre["resolution"].string_value == "native" and pre["max_visual_tokens"].string_value == "768"
    assert pre["checkpoint"].string_value
    assert (repo / "colqwen2_preprocess" / "1" / "processor" / "tokenizer.json").exists()
    assert (repo / f"colqwen2_encoder_{full}" / "warmup" / "grid").stat().st_size == 8


def test_both_precisions_on_request(tiny_artifacts, tmp_path):
    for device, full, int8 in (("cpu", "fp32", "int8_dynamic"), ("gpu", "fp16", "int8")):
        models = configs(
            render(RenderOptions(tiny_artifacts, tmp_path / device, device=device, precisions=("fp16", "int8")))
        )
        served = {
            name: models[name].parameters["precision"].string_value
            for name in models
            if name.startswith("colqwen2") and models[name].platform == "ensemble"
        }
        assert served == {"colqwen2": full, "colqwen2_query": full, "colqwen2_int8": int8, "colqwen2_query_int8": int8}
    only = configs(render(RenderOptions(tiny_artifacts, tmp_path / "int8", device="cpu", precisions=("int8",))))
    assert only["colqwen2"].parameters["precision"].string_value == "int8_dynamic"
    assert not any(name.endswith("fp32") for name in only)
    with pytest.raises(RenderError, match="precision must be one or both of fp16, int8"):
        render(RenderOptions(tiny_artifacts, tmp_path / "bad", device="cpu", precisions=("fp8",)))


def test_max_visual_tokens_caps_the_pixels_and_is_checked(tiny_artifacts, tmp_path):
    models = configs(render(RenderOptions(tiny_artifacts, tmp_path / "capped", device="cpu", max_visual_tokens=256)))
    pre = models["colqwen2_preprocess"].parameters
    assert (pre["max_visual_tokens"].string_value, pre["max_pixels"].string_value) == ("256", str(256 * 784))
    assert models["colqwen2"].parameters["max_visual_tokens"].string_value == "256"
    assert models["colqwen2_encoder_fp32"].parameters["max_prompt_tokens"].string_value == str(256 + 15)
    for bad in (3, 769):
        with pytest.raises(RenderError, match=rf"max_visual_tokens {bad} is outside \[4, 768\]"):
            render(RenderOptions(tiny_artifacts, tmp_path / "bad", device="cpu", max_visual_tokens=bad))
    fixed = configs(render(RenderOptions(tiny_artifacts, tmp_path / "fixed", device="cpu", fixed_image_size=448)))
    assert fixed["colqwen2_preprocess"].parameters["resolution"].string_value == "fixed-448"
    with pytest.raises(RenderError, match="fixed image size 450 must be a multiple of 28"):
        render(RenderOptions(tiny_artifacts, tmp_path / "bad", device="cpu", fixed_image_size=450))


def test_gpu_budgets_are_derived_from_the_memory_each_precision_has(tiny_artifacts, tmp_path):
    """fp16 keeps 2 images and 8192 tokens per call; int8's room takes 1 image and 2 prompts at the cap. A prompt at
    the cap is as long as a render at the cap makes it."""
    gpu = SESSION_BUDGETS["gpu"]
    any_padding = {"vision_padding_pct": -1, "text_padding_pct": -1}  # a GPU pads in parallel
    assert gpu["fp16"] == {"max_session_patches": 6144, "max_session_images": 0, "max_session_tokens": 8192,
                           "max_session_sequences": 0, **any_padding}  # fmt: skip
    assert gpu["int8"] == {"max_session_patches": 3072, "max_session_images": 0, "max_session_tokens": 1566,
                           "max_session_sequences": 0, **any_padding}  # fmt: skip
    int8 = GPU_MEMORY["int8"]
    assert gpu_call_budgets(replace(int8, limit=int8.limit - int8.prompt_peak))["max_session_tokens"] == PROMPT_TOKENS
    with pytest.raises(ValueError, match="one image and one prompt at the cap need"):
        gpu_call_budgets(replace(int8, limit=int8.weights + int8.overhead + int8.image_peak))
    models = configs(render(RenderOptions(tiny_artifacts, tmp_path / "gpu", device="gpu", precisions=("fp16", "int8"))))
    for precision in ("fp16", "int8"):
        parameters = models[f"colqwen2_encoder_{precision}"].parameters
        assert {name: int(parameters[name].string_value) for name in gpu[precision]} == gpu[precision]
    assert models["colqwen2_encoder_fp16"].parameters["max_prompt_tokens"].string_value == str(PROMPT_TOKENS)


def test_copy_makes_a_self_contained_repository(tiny_artifacts, tmp_path):
    repo = render(RenderOptions(tiny_artifacts, tmp_path / "repo", device="cpu", copy=True))
    onnx = repo / "colqwen2_encoder_fp32" / "1" / "onnx"
    assert not onnx.is_symlink() and (onnx / "vision_encoder.onnx").is_file()


def test_missing_variant_names_the_fix(tiny_artifacts, tmp_path):
    partial = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, partial, ignore=shutil.ignore_patterns("fp16"))
    render(RenderOptions(partial, tmp_path / "cpu", device="cpu"))  # CPU hosts do not need fp16
    with pytest.raises(RenderError, match=r"serving fp16 on a GPU host needs the fp16 artifacts.*VARIANTS"):
        render(RenderOptions(partial, tmp_path / "gpu", device="gpu"))
    with pytest.raises(RenderError, match=r"manifest\.json"):
        render(RenderOptions(tmp_path / "nowhere", tmp_path / "x"))


def test_queues_are_bounded_by_default_with_an_unbounded_lane_for_canaries(tiny_artifacts, tmp_path):
    models = configs(render(RenderOptions(tiny_artifacts, tmp_path / "default", device="cpu")))
    batching = {name: c.dynamic_batching for name, c in models.items() if c.platform != "ensemble"}
    assert batching
    for name, b in batching.items():
        policy = b.default_queue_policy
        # admission bounds the encoder's work ahead, so its queue has no time bound that would refuse late;
        # preprocessing is bounded by count (the SDK's embed_batch window), refusing at once, never by a slow host
        size = 32 if name == "colqwen2_preprocess" else 128  # budgets.PREPROCESS_MAX_QUEUE of a CPU host
        assert policy.max_queue_size == size and policy.default_timeout_microseconds == 0, name
        assert policy.timeout_action == policy.REJECT
        assert b.priority_levels == 2 and b.default_priority_level == 2  # user traffic
        canary = b.priority_queue_policy[1]  # colqwen2_client's CANARY_PRIORITY
        assert canary.max_queue_size == 0 and canary.default_timeout_microseconds == 0
    sized = RenderOptions(tiny_artifacts, tmp_path / "sized", device="cpu", max_queue_size=64, preprocess_max_queue=0)
    assert all(
        c.dynamic_batching.default_queue_policy.max_queue_size == 64
        for c in configs(render(sized)).values()
        if c.platform != "ensemble"
    )
    timed = RenderOptions(tiny_artifacts, tmp_path / "timed", device="cpu", preprocess_queue_timeout_ms=500)
    policy = configs(render(timed))["colqwen2_preprocess"].dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 32 and policy.default_timeout_microseconds == 500_000
    off = RenderOptions(
        tiny_artifacts,
        tmp_path / "unbounded",
        device="cpu",
        max_queue_size=0,
        queue_timeout_ms=0,
        preprocess_max_queue=0,
    )
    assert all(not c.dynamic_batching.HasField("default_queue_policy") for c in configs(render(off)).values())
    gpu = RenderOptions(tiny_artifacts, tmp_path / "gpu-queue", device="gpu", allow_cpu_fallback=True)
    assert configs(render(gpu))["colqwen2_preprocess"].dynamic_batching.default_queue_policy.max_queue_size == 64
    with pytest.raises(RenderError, match="preprocess_max_queue must be -1"):
        render(RenderOptions(tiny_artifacts, tmp_path / "bad-queue", device="cpu", preprocess_max_queue=-2))
    with pytest.raises(RenderError, match="max_queue_size must be 0"):
        render(RenderOptions(tiny_artifacts, tmp_path / "bad", device="cpu", max_queue_size=-1))


def test_make_serve_exports_only_what_the_host_serves():
    from model_repository.render import served_variants

    assert served_variants("fp16", "cpu") == "fp32"
    assert served_variants("fp16,int8", "cpu") == "fp32,int8_dynamic"
    assert served_variants("fp16, int8", "gpu") == "fp16,int8"
    assert served_variants("int8", "gpu") == "int8"


def test_admission_is_on_by_default_with_the_hosts_bound_and_can_be_turned_off(tiny_artifacts, tmp_path):
    def preprocess(options: RenderOptions) -> dict[str, str]:
        config = configs(render(options))["colqwen2_preprocess"]
        return {k: v.string_value for k, v in config.parameters.items() if k.startswith("admission")}

    cpu = preprocess(RenderOptions(tiny_artifacts, tmp_path / "cpu", device="cpu"))
    assert cpu == {"admission_wait_ms": "10000", "admission_min_in_flight": "4", "admission_rate_ns": "800000",
                   "admission_place_parameter": "colqwen2-place", "admission_final_claim": "!"}  # fmt: skip
    off = RenderOptions(tiny_artifacts, tmp_path / "off", device="cpu", admission_wait_ms=0)
    assert preprocess(off)["admission_wait_ms"] == "0"
    # admission off: the encoder's queue keeps the time bound
    encoder = next(c for n, c in configs(render(off)).items() if n.startswith("colqwen2_encoder"))
    assert encoder.dynamic_batching.default_queue_policy.default_timeout_microseconds == 2_000_000
    with pytest.raises(RenderError, match="admission_wait_ms"):
        render(RenderOptions(tiny_artifacts, tmp_path / "bad", device="cpu", admission_wait_ms=-2))
