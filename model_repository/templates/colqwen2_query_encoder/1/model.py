"""Triton adapter for a `colqwen2_query_encoder_<variant>` model; logic in `colqwen2_serving.encoders`."""

from __future__ import annotations

import json

from colqwen2_serving.config import ModelParameters
from colqwen2_serving.encoders import QueryEncoder
from colqwen2_serving.sessions import session_from_parameters
from colqwen2_serving.triton_io import encoder_responses, input_array, output_dtypes


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX Runtime session for this variant on the best available execution provider."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        params = ModelParameters.from_args(args)
        batch, tokens = config["max_batch_size"], params.integer("max_query_tokens")
        profile = tuple((name, (1, 1), (8, 32), (batch, tokens)) for name in ("input_ids", "attention_mask"))
        session = session_from_parameters(params, args, profile)
        self.encoder = QueryEncoder(session, params.integer("pad_token_id"))

    def execute(self, requests: list) -> list:
        """All queries of all requests in one encoder call, re-padded to the longest; one response per request."""
        results = self.encoder.embed(
            [(input_array(r, "INPUT_IDS"), input_array(r, "ATTENTION_MASK")) for r in requests]
        )
        return encoder_responses(results, self.dtypes, self.name)

    def finalize(self) -> None:
        """Drop the session so GPU memory is released before the stub exits."""
        self.encoder = None
