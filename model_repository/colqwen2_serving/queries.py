"""Tokenise text queries exactly as colpali-engine's `ColQwen2Processor.process_queries` does.

colpali-engine appends ten `<|endoftext|>` "query augmentation" tokens, adds no prefix, and pads
on the left with the pad token (also `<|endoftext|>`). The checkpoint's own `tokenizer.json` is
run by the `tokenizers` library, so serving needs neither transformers nor torch.
Queries longer than `max_tokens` (augmentation tokens included) are refused, never truncated:
a silently shortened query would return confident results for a question nobody asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import InputError

AUGMENTATION_TOKEN = "<|endoftext|>"
AUGMENTATION_COUNT = 10
DEFAULT_MAX_TOKENS = 512


class QueryTokenizer:
    def __init__(self, tokenizer: Tokenizer, pad_id: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.max_tokens = max_tokens
        self.suffix = AUGMENTATION_TOKEN * AUGMENTATION_COUNT

    @classmethod
    def from_processor_dir(cls, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> QueryTokenizer:
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
