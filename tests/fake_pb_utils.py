"""A small stand-in for `triton_python_backend_utils`, for unit tests of the `model.py` adapters.

Integration tests never use it: they run the real Triton server.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

_DTYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_STRING": np.object_,
}


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class ResponseSender:
    """Records what a model sends, and holds it to the non-decoupled rule: one response, sent final."""

    def __init__(self) -> None:
        self.sent: list[InferenceResponse] = []

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.sent or flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL or response is None:
            raise RuntimeError("a non-decoupled model sends exactly one response, with the final flag")
        self.sent.append(response)


class InferenceRequest:
    def __init__(self, inputs: dict[str, np.ndarray], parameters: dict | None = None) -> None:
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
        self.sender = ResponseSender()
        self._parameters = parameters or {}

    def parameters(self) -> str:  # the Python backend hands them over as JSON
        return json.dumps(self._parameters)

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def inputs_as_arrays(self) -> dict[str, np.ndarray]:
        return {k: t.as_numpy() for k, t in self.inputs.items()}


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._outputs = output_tensors or []
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self._outputs if t.name() == name)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request.inputs.get(name)


def triton_string_to_numpy(name: str) -> Any:
    return _DTYPES[name]
