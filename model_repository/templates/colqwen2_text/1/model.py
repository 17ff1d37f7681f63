"""Triton adapter for a `colqwen2_text_<variant>` model; logic in `colqwen2_serving.runners`."""

from __future__ import annotations

import json

from colqwen2_serving.config import ModelParameters
from colqwen2_serving.runners import text_runner
from colqwen2_serving.triton_io import input_array, output_dtypes, text_responses


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX Runtime session for this variant on the best available execution provider."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        self.runner = text_runner(ModelParameters.from_args(args), args)

    def execute(self, requests: list) -> list:
        """Queries and image prompts of all requests in budget-bounded calls; one response per request."""
        names = ("INPUT_IDS", "ATTENTION_MASK", "VISUAL", "GRID")
        results = self.runner.run([tuple(input_array(r, n) for n in names) for r in requests])
        return text_responses(results, self.dtypes, self.name)

    def finalize(self) -> None:
        """Drop the session so GPU memory is released before the stub exits."""
        self.runner = None
