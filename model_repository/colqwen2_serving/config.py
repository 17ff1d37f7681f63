"""Read a model's `parameters` from its Triton config (the JSON `args["model_config"]`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ModelParameters:
    """String parameters with typed getters. An unfilled `${...}` template value counts as unset."""

    def __init__(self, model_config: dict[str, Any], model_dir: str | Path = ".") -> None:
        self.model_name = model_config.get("name", "?")
        self.model_dir = Path(model_dir)
        raw = model_config.get("parameters", {}) or {}
        self.values = {
            k: v.get("string_value", "")
            for k, v in raw.items()
            if v.get("string_value", "") and not v.get("string_value", "").startswith("${")
        }

    @classmethod
    def from_args(cls, args: dict[str, str]) -> ModelParameters:
        """From the `args` Triton passes to `initialize` (model_config JSON plus repository paths)."""
        model_dir = Path(args.get("model_repository", ".")) / args.get("model_version", "1")
        return cls(json.loads(args["model_config"]), model_dir)

    def _get(self, key: str, default: Any) -> str:
        if key in self.values:
            return self.values[key]
        if default is None:
            raise ValueError(f"model {self.model_name}: config parameter {key!r} is required")
        return str(default)

    def text(self, key: str, default: str | None = None) -> str:
        return self._get(key, default)

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"model {self.model_name}: parameter {key}={value!r} is not an integer") from None

    def path(self, key: str, default: str | None = None) -> Path:
        """A path parameter; relative paths are relative to the model's version folder."""
        path = Path(self._get(key, default))
        return path if path.is_absolute() else self.model_dir / path
