"""Running exported graphs with ONNX Runtime on the CPU: one place for session settings."""

from __future__ import annotations

from pathlib import Path


def cpu_session(path: Path, threads: int | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session; `threads` caps intra-op threads (None: ORT's default);
    `profile_prefix` turns ONNX Runtime's profiler on, writing to files with that prefix."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_mem_pattern = False  # shapes change from call to call (see colqwen2_serving/sessions.py)
    if profile_prefix is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
