"""The REST gateway that keeps the original service's API (`pip install colqwen2-client[gateway]`)."""

from .app import GatewaySettings, create_app

__all__ = ["GatewaySettings", "create_app"]
