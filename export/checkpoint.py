"""Load a ColQwen2 checkpoint (local folder or hub id) through colpali-engine.

A LoRA adapter such as vidore/colqwen2-v1.0 (over vidore/colqwen2-base) is merged into its base,
so the exporter always sees a plain `ColQwen2`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

log = logging.getLogger(__name__)

# colpali-engine's ColQwen2 is a Qwen2-VL model. transformers' own `-hf` ColQwen2 checkpoints
# (model_type "colqwen2") use a different query prompt and are refused rather than mixed up.
_SUPPORTED_MODEL_TYPES = {"qwen2_vl"}


@dataclass
class LoadedCheckpoint:
    model: Any  # colpali_engine.models.ColQwen2, eval mode, float32
    processor: Any  # colpali_engine.models.ColQwen2Processor
    source: str
    merged_adapter: bool
    random_weights: bool  # built offline by export.random_checkpoint


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {name_or_path!r} is a file; expected a folder or a hub id")
        return path
    first = name_or_path.split("/", 1)[0]
    local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if local or first == "checkpoints" or Path(first).is_dir():  # a local path: never ask the hub about it
        raise CheckpointError(
            f"checkpoint not found: no such folder {name_or_path!r} (a hub id is owner/name, and is not looked up "
            f"when a local folder has the owner's name; random checkpoints are built with "
            f"`make checkpoint SIZE=tiny|medium|wide|real` into checkpoints/<size>)"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path))
    except Exception as exc:  # hub errors are many; the message is what matters
        raise CheckpointError(f"checkpoint {name_or_path!r} could not be fetched from the hub: {exc}") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from None


def _check_config(folder: Path, source: str) -> None:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{source!r} is not a ColQwen2 checkpoint: no config.json or adapter_config.json")
    model_type = _read_json(config_path).get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source!r} is not a colpali-engine ColQwen2 checkpoint: model_type is {model_type!r}, expected 'qwen2_vl'"
        )


def load_checkpoint(name_or_path: str) -> LoadedCheckpoint:
    """Load model and processor in float32 on the CPU, merging a LoRA adapter if there is one."""
    folder = _resolve(name_or_path)
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.exists():
        _check_config(folder, name_or_path)  # a folder that is no ColQwen2 checkpoint is named before torch loads
    import torch
    from colpali_engine.models import ColQwen2, ColQwen2Processor

    merged = False
    try:
        if adapter_config.exists():
            from peft import PeftModel

            base_name = _read_json(adapter_config).get("base_model_name_or_path")
            if not base_name:
                raise CheckpointError(f"{adapter_config} names no base_model_name_or_path")
            base_folder = _resolve(base_name)
            _check_config(base_folder, base_name)
            base = ColQwen2.from_pretrained(base_folder, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, folder).merge_and_unload()
            merged = True
            processor_folder = (
                folder
                if (folder / "preprocessor_config.json").exists() or (folder / "processor_config.json").exists()
                else base_folder
            )
        else:
            model = ColQwen2.from_pretrained(folder, dtype=torch.float32)
            processor_folder = folder
        processor = ColQwen2Processor.from_pretrained(processor_folder)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"could not load ColQwen2 from {name_or_path!r}: {type(exc).__name__}: {exc}") from None
    model.eval()
    log.info(
        "loaded %s (%.1f M parameters%s)",
        name_or_path,
        sum(p.numel() for p in model.parameters()) / 1e6,
        ", LoRA merged" if merged else "",
    )
    return LoadedCheckpoint(
        model=model,
        processor=processor,
        source=str(name_or_path),
        merged_adapter=merged,
        random_weights=(folder / "random_checkpoint.json").exists(),
    )
