"""What endpoints share: the loaded service (predictor + batcher + metrics), settings, and the API-key check."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import anyio
from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from velora.ofa.processor import OFAProcessor
from velora.predictor import BASE, Predictor
from velora.serve.batching import MicroBatcher
from velora.serve.metrics import Metrics
from velora.serve.settings import ServeSettings


@dataclass
class Service:
    """Built by the lifespan once the model is loaded; endpoints reach the model only through `batcher`."""

    settings: ServeSettings
    predictor: Predictor  # owned by the batcher's worker thread: never call it from an endpoint
    batcher: MicroBatcher
    metrics: Metrics
    default_adapter: str  # used when a request names none: "default" for an adapter --model_path, else "base"
    decode_limiter: anyio.CapacityLimiter
    ready: bool = False

    @property
    def adapters(self) -> list[str]:
        """Names a request may pick: the default first, then "base" (adapters off), then the others."""
        names = [BASE, *self.predictor.adapter_names]
        return [self.default_adapter] + [n for n in names if n != self.default_adapter]

    def processor(self, adapter: str) -> OFAProcessor:
        """The preprocessing of the adapter that scores a request (each adapter keeps the one it was trained
        with)."""
        return self.predictor.processor_for(adapter)


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_service(request: Request) -> Service:
    service: Service | None = request.app.state.service
    if service is None or not service.ready:
        raise HTTPException(status_code=503, detail="the model is not loaded yet (or the server is stopping); "
                                                    "retry when /readyz answers 200", headers={"Retry-After": "1"})
    return service


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="The key given to `velora serve --api_key` (or VELORA_API_KEY).")
bearer_scheme = HTTPBearer(auto_error=False, description="The same key as `Authorization: Bearer KEY`.")


def _key_matches(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def require_api_key(request: Request, key: str | None = Security(api_key_header),
                    bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> None:
    """401 unless the server has no key or the request carries it (X-API-Key or Authorization: Bearer)."""
    expected = get_settings(request).api_key
    if expected is None:
        return
    given = key or (bearer.credentials if bearer is not None else None)
    if not given:
        raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                            detail="missing API key: send it as the X-API-Key header (or Authorization: Bearer KEY)")
    if not _key_matches(given, expected):
        raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"}, detail="wrong API key")


async def carries_api_key(request: Request, key: str | None = Security(api_key_header),
                          bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> bool:
    """Whether the server has a key and the request carries it (never raises: for endpoints open to all that
    show more to the key's holders)."""
    expected = get_settings(request).api_key
    given = key or (bearer.credentials if bearer is not None else None)
    return expected is not None and bool(given) and _key_matches(given, expected)
