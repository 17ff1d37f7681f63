"""Triton adapter for a `colqwen2_encoder_<variant>` model; logic in `colqwen2_serving.runners`."""

from __future__ import annotations

import json
import time

from colqwen2_serving.admission import Ledger, Meter, images_cost, ledger_folder
from colqwen2_serving.config import ModelParameters
from colqwen2_serving.runners import encoder_runner
from colqwen2_serving.triton_io import encoder_responses, error_response, input_array, output_dtypes, send, tickets

INPUTS = ("INPUT_IDS", "ATTENTION_MASK", "PATCHES", "GRID")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        """Open the vision and text ONNX Runtime sessions for this variant on the best available provider."""
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.dtypes = output_dtypes(config)
        self.runner = encoder_runner(ModelParameters.from_args(args), args)
        self.meter = Meter(Ledger(ledger_folder()), self.name)  # admission: the rate, the answered tickets

    def execute(self, requests: list) -> None:
        """Images (vision, then text) and queries (text) in budgeted calls, wave by wave (`EncoderRunner.waves`);
        each request answered as soon as its wave is done."""
        inputs = [tuple(input_array(r, name) for name in INPUTS) for r in requests]
        for wave in self.runner.waves(inputs):
            done = [requests[i] for i in wave]
            try:
                start = time.perf_counter()
                results = self.runner.run([inputs[i] for i in wave])
                self.meter.done(start, time.perf_counter(), [images_cost(inputs[i][3]) for i in wave], tickets(done))
                answers = encoder_responses(results, self.dtypes, self.name, self.runner.provider)
            except Exception as exc:  # the runner answers failures per request; never leave a wave unanswered
                answers = [error_response(exc, self.name)] * len(done)
            for request, answer in zip(done, answers, strict=True):
                send(request, answer)

    def finalize(self) -> None:
        """Drop the sessions so GPU memory is released before the stub exits."""
        self.runner = None
