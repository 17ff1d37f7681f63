"""Triton adapter for `colqwen2_preprocess`; the logic lives in `colqwen2_serving.preprocess`."""

from __future__ import annotations

import json

from colqwen2_serving.config import ModelParameters
from colqwen2_serving.preprocess import Preprocessor
from colqwen2_serving.triton_io import error_response, input_array, output_dtypes, response, string_parameter


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Read image size, limits and the tokenizer from the config parameters, once."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        self.preprocess = Preprocessor.from_parameters(ModelParameters.from_args(args))

    def execute(self, requests: list) -> list:
        """One response per request; a bad image or query fails only its own request."""
        responses = []
        for request in requests:
            try:
                place = string_parameter(request, self.preprocess.place_parameter)  # its place in admission's line
                outputs = self.preprocess(input_array(request, "IMAGE"), input_array(request, "TEXT"), place)
                responses.append(response(outputs, self.dtypes))
            except Exception as exc:
                responses.append(error_response(exc, self.name))
        return responses

    def finalize(self) -> None:
        """Nothing to release: no sessions or files stay open."""
