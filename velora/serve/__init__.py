"""`velora serve`: the Predictor behind FastAPI, with micro-batching, several adapters, limits, metrics and a page."""

from velora.serve.app import create_app
from velora.serve.settings import ServeSettings, parse_adapter_specs

__all__ = ["ServeSettings", "create_app", "parse_adapter_specs"]
