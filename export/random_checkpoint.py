"""Build an offline ColQwen2 checkpoint with the real architecture and random weights.

Model weights cannot be downloaded on our build machines, so tests, the demo and the benchmarks
use checkpoints made here. They are real ColQwen2 checkpoints: a `Qwen2VLConfig` (Qwen2-VL
vision tower with patch 14, spatial merge 2, temporal patch 2; M-RoPE text model; a 128-dim
projection), a real `ColQwen2Processor` (Qwen2-VL image processor and a byte-level BPE tokenizer
carrying the Qwen2-VL special tokens), all saved with `save_pretrained` so that
`ColQwen2.from_pretrained` / `ColQwen2Processor.from_pretrained` load them exactly like
vidore/colqwen2-v1.0.

Sizes:
- ``tiny``: seconds to build and export; what the tests and the offline demo use.
- ``medium``: large enough that compute dominates on a CPU; for CPU speed ratios.
- ``wide``: the real model's layer widths with 4 vision and 4 text layers (about the real 32:28
  mix): each layer costs what a real one does, in a size a 2-core CPU runs in about a second; for
  CPU ratios at the real proportions of attention to matmul work.
- ``real``: Qwen2-VL-2B shapes (colqwen2-base, 2.2 B parameters) for GPU speed and memory work.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from model_repository.colqwen2_serving.grid import PUBLISHED_MAX_PIXELS, PUBLISHED_MIN_PIXELS

# The Qwen2-VL special tokens, in the order the real tokenizer numbers them after its vocabulary.
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@dataclass(frozen=True)
class CheckpointSize:
    """Shapes of one random checkpoint. Field names follow `Qwen2VLConfig`."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    mrope_section: tuple[int, int, int]  # must sum to head_dim / 2
    vision_depth: int
    vision_embed: int
    vision_heads: int
    bpe_vocab: int  # size of the trained byte-level BPE, before the special tokens
    vocab_size: int | None = None  # embedding rows; None: exactly the tokenizer's length


# One row per size, in CheckpointSize's field order:
#   text: hidden, layers, heads, kv heads, intermediate, M-RoPE sections; vision: depth, width, heads; BPE vocabulary
SIZES: dict[str, CheckpointSize] = {
    "tiny": CheckpointSize(64, 2, 4, 2, 128, (2, 3, 3), 2, 32, 2, 600),
    "medium": CheckpointSize(512, 4, 8, 2, 1536, (8, 12, 12), 6, 384, 6, 2000),
    "wide": CheckpointSize(1536, 4, 12, 2, 8960, (16, 24, 24), 4, 1280, 16, 2000),
    # vidore/colqwen2-base (Qwen2-VL-2B): 2.209 B parameters, vision tower 665 M.
    "real": CheckpointSize(1536, 28, 12, 2, 8960, (16, 24, 24), 32, 1280, 16, 2000, vocab_size=151936),
}

# A small English corpus in the service's domain, so the BPE learns useful merges offline.
_CORPUS_WORDS = (
    "amazon keepa price history chart new used sales rank buy box list price lightning deal "
    "warehouse deals collectible refurbished offer count rating reviews product image photo "
    "shoe shirt laptop phone camera headphones watch backpack kettle blender toy book lamp "
    "red blue green black white silver gold wireless bluetooth stainless steel cotton leather "
    "cheap expensive discount drop spike lowest highest average month week year day date "
    "january february march april may june july august september october november december "
    "describe the image what is show me find a with of for and in on under over between "
    "0 1 2 3 4 5 6 7 8 9 10 20 50 99 100 199 2024 2025 2026 $ % . , ? ! - : ( )"
).split()


def _train_tokenizer(bpe_vocab: int):
    """Train a byte-level BPE and wrap it as the Qwen2 tokenizer with the Qwen2-VL specials."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    rng = random.Random(0)
    corpus = [" ".join(rng.choices(_CORPUS_WORDS, k=12)) for _ in range(4000)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab = dict(state["vocab"])
    for token in QWEN2_VL_SPECIAL_TOKENS:
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        additional_special_tokens=list(QWEN2_VL_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )
    return tokenizer


def qwen2vl_config(
    spec: CheckpointSize,
    special_ids: dict[str, int],
    vocab_size: int,
    text_layers: int | None = None,
    vision_depth: int | None = None,
):
    """The `Qwen2VLConfig` of a checkpoint of these shapes (optionally with fewer layers: bench.memory's slices)."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": text_layers or spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": list(spec.mrope_section),
            },
            "bos_token_id": special_ids["<|endoftext|>"],
            "eos_token_id": special_ids["<|im_end|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": vision_depth or spec.vision_depth,
            "embed_dim": spec.vision_embed,
            "hidden_size": spec.text_hidden,
            "num_heads": spec.vision_heads,
            "mlp_ratio": 4,
            "hidden_act": "quick_gelu",
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=special_ids["<|image_pad|>"],
        video_token_id=special_ids["<|video_pad|>"],
        vision_start_token_id=special_ids["<|vision_start|>"],
        vision_end_token_id=special_ids["<|vision_end|>"],
    )


def published_image_processor():
    """Qwen2-VL's image processor with the published vidore/colqwen2-v1.0 limits: 4 to 768 visual tokens per
    image, so tests, the demo and the benchmarks pay what the real service pays per image."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(min_pixels=PUBLISHED_MIN_PIXELS, max_pixels=PUBLISHED_MAX_PIXELS)


def random_model(size: str = "tiny", seed: int = 0, device: str = "cpu"):
    """(model, tokenizer): a seeded random-weight ColQwen2 of `size`, in memory, initialised on `device`
    (bit-identical for a given seed on the CPU; a GPU initialises 2.2 B parameters in seconds)."""
    import torch
    from colpali_engine.models import ColQwen2

    if size not in SIZES:
        raise ValueError(f"unknown checkpoint size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = _train_tokenizer(spec.bpe_vocab)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}
    config = qwen2vl_config(spec, ids, spec.vocab_size or len(tokenizer))
    with torch.device(device):
        model = ColQwen2(config).eval()
    with torch.no_grad():
        # Random init leaves this bias at zero, which turns left-padded query rows into 0/0 = NaN
        # in the reference; the real checkpoint has a non-zero bias.
        model.custom_text_proj.bias.normal_(0.0, 0.02)
    return model, tokenizer


def build_random_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight ColQwen2 checkpoint and its processor to ``out_dir``.

    The write goes to a sibling temporary folder that is renamed at the end, so an interrupted
    build never leaves a folder that looks complete.
    """
    import shutil

    from colpali_engine.models import ColQwen2Processor
    from transformers import Qwen2VLVideoProcessor

    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)

    model, tokenizer = random_model(size, seed)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    processor = ColQwen2Processor(
        image_processor=published_image_processor(),
        tokenizer=tokenizer,
        # ColQwen2Processor refuses a missing video processor; the model never sees videos.
        video_processor=Qwen2VLVideoProcessor(),
    )
    processor.save_pretrained(tmp_dir)
    (tmp_dir / "random_checkpoint.json").write_text(
        json.dumps({"size": size, "seed": seed, "shapes": asdict(SIZES[size]), "random_weights": True}, indent=2)
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = build_random_checkpoint(args.out_dir, args.size, args.seed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
