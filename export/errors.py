"""Typed export errors. The CLI prints each as one line and exits non-zero."""


class ExportError(Exception):
    """Base class: anything that stops an export."""

    exit_code = 1


class CheckpointError(ExportError):
    """The checkpoint is missing, unreadable, or not a ColQwen2 checkpoint."""

    exit_code = 2


class ConfigurationError(ExportError):
    """An option is invalid (resolution, variant, output folder)."""

    exit_code = 2


class GraphCheckError(ExportError):
    """An exported graph is invalid or holds an op that TensorRT cannot build."""

    exit_code = 3


class ValidationError(ExportError):
    """An artifact misses its parity threshold against the colpali-engine reference."""

    exit_code = 4
