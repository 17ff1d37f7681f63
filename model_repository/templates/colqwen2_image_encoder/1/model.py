"""Triton adapter for a `colqwen2_image_encoder_<variant>` model; logic in `colqwen2_serving.encoders`."""

from __future__ import annotations

import json

from colqwen2_serving.config import ModelParameters
from colqwen2_serving.encoders import ImageEncoder
from colqwen2_serving.sessions import session_from_parameters
from colqwen2_serving.triton_io import encoder_responses, input_array, output_dtypes


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX Runtime session for this variant on the best available execution provider."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        params = ModelParameters.from_args(args)
        size = params.integer("image_size")
        profile = (("pixel_values", (1, size, size, 3), (8, size, size, 3), (config["max_batch_size"], size, size, 3)),)
        session = session_from_parameters(params, args, profile)
        self.encoder = ImageEncoder(session, size, params.integer("max_session_batch", 0))

    def execute(self, requests: list) -> list:
        """All requests in one encoder call; one response per request."""
        results = self.encoder.embed([input_array(r, "PIXEL_VALUES") for r in requests])
        return encoder_responses(results, self.dtypes, self.name)

    def finalize(self) -> None:
        """Drop the session so GPU memory is released before the stub exits."""
        self.encoder = None
