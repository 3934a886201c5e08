"""Running the app under uvicorn, as `velora serve` does."""

from __future__ import annotations

import copy
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from velora.errors import VeloraError
from velora.predictor import Predictor
from velora.serve.app import create_app
from velora.serve.protocol import guarded_protocol
from velora.serve.settings import ServeSettings


def ensure_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise VeloraError(f"cannot listen on {host}:{port} ({e.strerror}): is another server running there? "
                              "pick another --port") from None


def log_config(level: str) -> dict:
    """uvicorn's own logging, plus velora's one line per request in the same format."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["velora"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def uvicorn_config(app: FastAPI, **options: Any) -> uvicorn.Config:
    """uvicorn's Config for a velora app: its protocol (request-header timeout, connection count) and keep-alive
    timeout from the app's settings; `options` are passed on (host, port, log_level...)."""
    settings: ServeSettings = app.state.settings
    return uvicorn.Config(app, http=guarded_protocol(settings, app.state.metrics),
                          timeout_keep_alive=settings.keep_alive_timeout, **options)  # type: ignore[arg-type]


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, predictor: Predictor | None = None,
          log_level: str = "info") -> None:
    """Block serving `settings` on host:port until Ctrl+C / SIGTERM (requests in flight are finished first)."""
    config = uvicorn_config(create_app(settings, predictor), host=host, port=port, log_config=log_config(log_level),
                            log_level=log_level, access_log=False, timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # startup failed; uvicorn has logged why
        raise SystemExit(3)
