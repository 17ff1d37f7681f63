"""The only module that touches `triton_python_backend_utils`: request tensors in, responses out.

Imported by the `model.py` adapters inside the Triton Python backend (or with a fake module in
unit tests). One response per request, always: an `InputError` becomes INVALID_ARG with its
message; admission's `Refused` becomes UNAVAILABLE (retryable: HTTP 503, gRPC UNAVAILABLE) with its
message; anything else becomes INTERNAL naming the model and the error, never a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from .admission import Refused
from .errors import InputError

log = logging.getLogger("colqwen2_serving")


def input_array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def string_parameter(request: Any, name: str) -> str | None:
    """A request parameter's value as a string (Triton's request parameters, which an ensemble passes on to the
    models it calls), or None when the request does not carry it, its parameters cannot be read or `name` is ""."""
    if not name:
        return None
    try:
        value = json.loads(request.parameters() or "{}").get(name)
    except (AttributeError, TypeError, ValueError):
        return None
    return None if value is None else str(value)


def tickets(requests: list) -> list[str]:
    """The admission tickets the requests carry (input TICKET, [n, 1] of one name; absent or "" when none)."""
    names = []
    for request in requests:
        array = input_array(request, "TICKET")
        if array is not None and array.size:
            value = array.reshape(-1)[0]
            names.append(value.decode() if isinstance(value, bytes) else str(value))
    return [n for n in names if n]


def output_dtypes(model_config: Mapping[str, Any]) -> dict[str, np.dtype]:
    """Each output's numpy dtype, read once from the config so it is written in one place."""
    return {o["name"]: np.dtype(pb_utils.triton_string_to_numpy(o["data_type"])) for o in model_config["output"]}


def response(outputs: Mapping[str, np.ndarray], dtypes: Mapping[str, np.dtype]) -> Any:
    tensors = [
        pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtypes[name])) for name, value in outputs.items()
    ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def error_response(error: Exception, model_name: str) -> Any:
    if isinstance(error, InputError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
    if isinstance(error, Refused):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.UNAVAILABLE))
    log.error("%s: %s: %s", model_name, type(error).__name__, error)
    message = f"{model_name} failed: {type(error).__name__}: {error}"[:1000]
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


def send(request: Any, answer: Any) -> None:
    """`answer` as the request's one and final response, from inside execute() (which then returns None): the
    Python backend's response sender, so that a batch's requests are answered as each is done."""
    request.get_response_sender().send(answer, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def encoder_responses(results: list, dtypes: Mapping[str, np.dtype], model_name: str, provider: str = "") -> list:
    """Encoder results (an `Embedded` or the exception for that request) -> Triton responses, each naming the
    execution provider that ran it when the model declares a PROVIDER output."""
    out = []
    for result in results:
        if isinstance(result, Exception):
            out.append(error_response(result, model_name))
        else:
            outputs = {"EMBEDDINGS": result.embeddings, "NUM_VECTORS": result.num_vectors, "POOLED": result.pooled}
            if "PROVIDER" in dtypes:
                rows = len(result.num_vectors)
                outputs["PROVIDER"] = np.array([[provider.encode()]] * rows, dtype=np.object_)
            out.append(response(outputs, dtypes))
    return out
