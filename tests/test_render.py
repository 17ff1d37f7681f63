"""Rendering the `${var}` templates into a model repository Triton accepts."""

from __future__ import annotations

import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from model_repository.render import ENSEMBLES, RenderError, RenderOptions, fill_template, render


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
    assert set(ENSEMBLES) <= set(models)
    for name, config in models.items():
        assert config.name == name and config.max_batch_size >= 32
        if config.platform == "ensemble":
            for step in config.ensemble_scheduling.step:
                assert step.model_name in models, f"{name} refers to a model that is not rendered"
            assert (repo / name / "1").is_dir()
        else:
            assert config.HasField("dynamic_batching"), name
            assert (repo / name / "1" / "model.py").exists()
    image_precision = models["colqwen2"].parameters["precision"].string_value
    int8_precision = models["colqwen2_int8"].parameters["precision"].string_value
    assert (image_precision, int8_precision) == (("fp16", "int8") if device == "gpu" else ("fp32", "int8_dynamic"))
    encoder = models[f"colqwen2_image_encoder_{image_precision}"]
    assert encoder.instance_group[0].kind == (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if device == "gpu"
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    pre = models["colqwen2_preprocess"].parameters
    assert pre["image_size"].string_value == "448" and pre["checkpoint"].string_value
    assert (repo / "colqwen2_preprocess" / "1" / "processor" / "tokenizer.json").exists()


def test_copy_makes_a_self_contained_repository(tiny_artifacts, tmp_path):
    repo = render(RenderOptions(tiny_artifacts, tmp_path / "repo", device="cpu", copy=True))
    onnx = repo / "colqwen2_image_encoder_fp32" / "1" / "onnx"
    assert not onnx.is_symlink() and (onnx / "image_encoder.onnx").is_file()


def test_missing_variant_names_the_fix(tiny_artifacts, tmp_path):
    partial = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, partial, ignore=shutil.ignore_patterns("fp16"))
    render(RenderOptions(partial, tmp_path / "cpu", device="cpu"))  # CPU hosts do not need fp16
    with pytest.raises(RenderError, match=r"colqwen2 on a GPU host needs the fp16 artifacts.*VARIANTS"):
        render(RenderOptions(partial, tmp_path / "gpu", device="gpu"))
    with pytest.raises(RenderError, match=r"manifest\.json"):
        render(RenderOptions(tmp_path / "nowhere", tmp_path / "x"))


def test_max_queue_size_bounds_every_batching_model(tiny_artifacts, tmp_path):
    models = configs(render(RenderOptions(tiny_artifacts, tmp_path / "bounded", device="cpu", max_queue_size=64)))
    batching = [c for c in models.values() if c.platform != "ensemble"]
    assert batching and all(c.dynamic_batching.default_queue_policy.max_queue_size == 64 for c in batching)
    unbounded = configs(render(RenderOptions(tiny_artifacts, tmp_path / "default", device="cpu")))
    assert all(not c.dynamic_batching.HasField("default_queue_policy") for c in unbounded.values())
    with pytest.raises(RenderError, match="max_queue_size must be 0"):
        render(RenderOptions(tiny_artifacts, tmp_path / "bad", device="cpu", max_queue_size=-1))
