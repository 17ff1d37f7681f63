"""Triton adapter for a `colqwen2_encoder_<variant>` model; logic in `colqwen2_serving.runners`."""

from __future__ import annotations

import json

from colqwen2_serving.config import ModelParameters
from colqwen2_serving.runners import encoder_runner
from colqwen2_serving.triton_io import encoder_responses, input_array, output_dtypes

INPUTS = ("INPUT_IDS", "ATTENTION_MASK", "PATCHES", "GRID")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Open the vision and text ONNX Runtime sessions for this variant on the best available provider."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        self.runner = encoder_runner(ModelParameters.from_args(args), args)

    def execute(self, requests: list) -> list:
        """Images (vision, then text) and queries (text) of all requests in budgeted calls; one response each."""
        results = self.runner.run([tuple(input_array(r, name) for name in INPUTS) for r in requests])
        return encoder_responses(results, self.dtypes, self.name, self.runner.provider)

    def finalize(self) -> None:
        """Drop the sessions so GPU memory is released before the stub exits."""
        self.runner = None
