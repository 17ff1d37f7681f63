"""The token ids colpali-engine's `ColQwen2Processor` builds, for queries and for image prompts.

Queries: colpali-engine appends ten `<|endoftext|>` "query augmentation" tokens, adds no prefix,
and pads on the left with the pad token (also `<|endoftext|>`). Queries longer than `max_tokens`
(augmentation tokens included) are refused, never truncated: a silently shortened query would
return confident results for a question nobody asked.

Images: the prompt `IMAGE_PROMPT`, its one `<|image_pad|>` repeated once per visual token of the
image's grid, as Qwen2-VL's processor expands it.

The checkpoint's own `tokenizer.json` is run by the `tokenizers` library, so serving needs
neither transformers nor torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import InputError

AUGMENTATION_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<|image_pad|>"
# colpali-engine's `ColQwen2Processor.visual_prompt_prefix` (a test holds the two equal).
IMAGE_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
AUGMENTATION_COUNT = 10
# Tokens of IMAGE_PROMPT besides its visual tokens, as the random checkpoints' tokenizer splits it: an image prompt
# at the 768-token cap is 783 tokens (tests/test_render.py holds this to a render). A deployment reads its own
# length from its tokenizer (`max_prompt_tokens`); the GPU call budgets (`model_repository.budgets`) use this one.
PROMPT_EXTRA_TOKENS = 15
DEFAULT_MAX_TOKENS = 512


class PromptTokenizer:
    def __init__(self, tokenizer: Tokenizer, pad_id: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.max_tokens = max_tokens
        self.suffix = AUGMENTATION_TOKEN * AUGMENTATION_COUNT
        image_token_id = tokenizer.token_to_id(IMAGE_TOKEN)
        if image_token_id is None:
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token: not a Qwen2-VL tokenizer")
        self.image_token_id = image_token_id
        ids = tokenizer.encode(IMAGE_PROMPT).ids
        if ids.count(image_token_id) != 1:
            raise ValueError(f"the image prompt does not tokenise to one {IMAGE_TOKEN}: {ids}")
        split = ids.index(image_token_id)
        self.image_prefix, self.image_suffix = ids[:split], ids[split + 1 :]

    @classmethod
    def from_processor_dir(cls, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> PromptTokenizer:
        """Load `tokenizer.json` (and the pad token from `tokenizer_config.json`) saved by the exporter."""
        path = Path(path)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        config_file = path / "tokenizer_config.json"
        pad_token = AUGMENTATION_TOKEN
        if config_file.exists():
            pad_token = json.loads(config_file.read_text()).get("pad_token") or pad_token
        if isinstance(pad_token, dict):  # older configs store an AddedToken dict
            pad_token = pad_token["content"]
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in {path / 'tokenizer.json'}")
        return cls(tokenizer, pad_id, max_tokens)

    def decode_text(self, raw: bytes | str) -> str:
        """Request bytes -> str, refusing what colpali-engine could not have been meant to embed."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"query is not valid UTF-8: byte {raw[exc.start]:#04x} at offset {exc.start}"
                ) from None
        if not raw.strip():
            raise InputError("empty query: send at least one non-space character")
        return raw

    def token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text + self.suffix).ids
        if len(ids) > self.max_tokens:
            raise InputError(
                f"query is {len(ids)} tokens (with {AUGMENTATION_COUNT} augmentation tokens), over the limit "
                f"of {self.max_tokens} (max_query_tokens); shorten it"
            )
        return ids

    def image_prompt_ids(self, n_visual: int) -> list[int]:
        """The image prompt with `n_visual` image tokens: what `process_images` builds for that grid."""
        return [*self.image_prefix, *([self.image_token_id] * n_visual), *self.image_suffix]

    def encode(self, texts: list[bytes | str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (input_ids, attention_mask), int64 [n, longest], left padded like the processor."""
        rows = [self.token_ids(self.decode_text(t)) for t in texts]
        return left_pad(rows, self.pad_id)


def left_pad(rows: list[list[int]] | list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token rows -> (ids, mask) int64 [n, longest], padding on the left."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, longest - len(row) :] = row
            mask[i, longest - len(row) :] = 1
    return ids, mask
