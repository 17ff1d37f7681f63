"""Triton adapter for a `colqwen2_vision_<variant>` model; logic in `colqwen2_serving.runners`."""

from __future__ import annotations

import json

from colqwen2_serving.config import ModelParameters
from colqwen2_serving.runners import vision_runner
from colqwen2_serving.triton_io import input_array, output_dtypes, vision_responses


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX Runtime session for this variant on the best available execution provider."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        self.runner = vision_runner(ModelParameters.from_args(args), args)

    def execute(self, requests: list) -> list:
        """Images of all requests in budget-bounded encoder calls, grouped by size; one response per request."""
        results = self.runner.run([(input_array(r, "PATCHES"), input_array(r, "GRID")) for r in requests])
        return vision_responses(results, self.dtypes, self.name)

    def finalize(self) -> None:
        """Drop the session so GPU memory is released before the stub exits."""
        self.runner = None
