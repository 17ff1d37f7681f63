"""Query tokenisation reproduces colpali-engine's `process_queries` exactly, without transformers."""

from __future__ import annotations

import numpy as np
import pytest

from export.sample_images import QUERIES
from model_repository.colqwen2_serving.errors import InputError
from model_repository.colqwen2_serving.prompts import PromptTokenizer

TEXTS = [
    *QUERIES,
    "x",
    "Ünïcödé ☃ 价格历史 🚀 émoji",
    "  leading spaces\nand a newline\t",
    "<|endoftext|> already inside",
    "lego " * 60,
]


@pytest.fixture(scope="module")
def tokenizer(tiny_artifacts) -> PromptTokenizer:
    return PromptTokenizer.from_processor_dir(tiny_artifacts / "processor")


def test_matches_process_queries_token_for_token(tokenizer, tiny_reference):
    ref = tiny_reference.processor.process_queries(TEXTS)
    ids, mask = tokenizer.encode([t.encode() for t in TEXTS])
    assert np.array_equal(ids, ref["input_ids"].numpy())
    assert np.array_equal(mask, ref["attention_mask"].numpy())


def test_pad_token_is_the_processors(tokenizer, tiny_reference):
    assert tokenizer.pad_id == tiny_reference.processor.tokenizer.pad_token_id


def test_long_queries_are_refused_not_truncated(tiny_artifacts):
    short = PromptTokenizer.from_processor_dir(tiny_artifacts / "processor", max_tokens=20)
    assert len(short.token_ids("hi")) <= 20
    with pytest.raises(InputError, match=r"query is \d+ tokens .* over the limit of 20 \(max_query_tokens\)"):
        short.token_ids("a query that is clearly longer than twenty tokens once the suffix is added")


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "empty query"), (b"   \n", "empty query"), (b"caf\xe9", r"not valid UTF-8: byte 0xe9 at offset 3")],
)
def test_bad_text_gets_a_clear_error(tokenizer, raw, message):
    with pytest.raises(InputError, match=message):
        tokenizer.encode([raw])


def test_image_prompt_is_process_images_for_every_grid(tokenizer, tiny_reference):
    from PIL import Image

    from model_repository.colqwen2_serving.prompts import IMAGE_PROMPT

    assert IMAGE_PROMPT == tiny_reference.processor.visual_prompt_prefix
    for size in ((500, 200), (40, 40), (300, 900)):
        batch = tiny_reference.processor.process_images([Image.new("RGB", size)])
        _, h, w = batch["image_grid_thw"][0].tolist()
        assert tokenizer.image_prompt_ids(h * w // 4) == batch["input_ids"][0].tolist()
    assert tokenizer.image_token_id == tiny_reference.model.config.image_token_id
