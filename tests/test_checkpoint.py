"""Loading checkpoints: plain folders, LoRA adapters merged into their base, hub ids."""

from __future__ import annotations

import json

import pytest
import torch

from export.checkpoint import load_checkpoint
from export.errors import CheckpointError
from export.sample_images import QUERIES


def test_lora_adapter_is_merged_into_its_base(tiny_checkpoint, tmp_path):
    """Like vidore/colqwen2-v1.0 over vidore/colqwen2-base: adapter_config.json names the base."""
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from peft import LoraConfig, get_peft_model

    base = ColQwen2.from_pretrained(tiny_checkpoint).eval()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)",
        init_lora_weights=False,  # random, so that merging visibly changes the outputs
    )
    peft_model = get_peft_model(base, config).eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    ColQwen2Processor.from_pretrained(tiny_checkpoint).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_checkpoint)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    loaded = load_checkpoint(str(adapter))
    assert loaded.merged_adapter and type(loaded.model).__name__ == "ColQwen2"
    batch = loaded.processor.process_queries(list(QUERIES[:2]))
    with torch.no_grad():
        expected = peft_model(**batch)
        merged = loaded.model(**batch)
        plain = ColQwen2.from_pretrained(tiny_checkpoint).eval()(**batch)
    assert (merged - expected).abs().max() < 1e-5
    assert (merged - plain).abs().max() > 1e-3, "the adapter must change the model"


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(CheckpointError, match="'nobody/no-such-model' could not be fetched from the hub"):
        load_checkpoint("nobody/no-such-model")


def test_a_file_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(str(f))


def test_a_missing_local_folder_is_named_before_any_hub_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for missing in ("checkpoints/medium", "models/mine", "./mine", "a/b/c"):
        with pytest.raises(CheckpointError, match=f"no such folder '{missing}'"):
            load_checkpoint(missing)
