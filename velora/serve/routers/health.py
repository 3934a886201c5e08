"""Probes and facts, all open without the API key: /healthz, /readyz, /metrics, /info."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from velora import __version__
from velora.labels import LABELS
from velora.serve.dependencies import Service, carries_api_key, get_metrics, get_service, get_settings
from velora.serve.metrics import Metrics
from velora.serve.settings import ServeSettings, display_name

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, warmed up, worker running",
            responses={503: {"description": "not ready (loading, stopping, or the worker died)"}})
async def readyz(request: Request) -> JSONResponse:
    service: Service | None = request.app.state.service
    if service is None or not service.ready:
        return JSONResponse({"status": "not ready", "reason": "model not loaded yet, or server stopping"}, 503)
    if not service.batcher.alive:
        return JSONResponse({"status": "not ready", "reason": "inference worker stopped"}, 503)
    return JSONResponse({"status": "ready", "adapters": service.adapters})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, metrics: Metrics = Depends(get_metrics)) -> Response:
    service: Service | None = request.app.state.service
    metrics.queue_depth.set(service.batcher.depth if service is not None else 0)
    return Response(metrics.render(), media_type=metrics.content_type)


@router.get("/info", summary="What this server serves: model, adapters, labels, limits",
            description="Open to all; the model's and adapters' folders (`paths`) only with the API key.")
async def info(service: Service = Depends(get_service), settings: ServeSettings = Depends(get_settings),
               authenticated: bool = Depends(carries_api_key)) -> dict:
    paths = {"paths": {"model": settings.model_path, **settings.adapters}} if authenticated else {}
    return {
        "version": __version__,
        "model": display_name(settings.model_path),
        **paths,
        "adapters": service.adapters,
        "default_adapter": service.default_adapter,
        "labels": list(LABELS),
        "image_size": service.processor(service.default_adapter).config.image_size,
        "image_sizes": {name: service.processor(name).config.image_size for name in service.adapters},
        "auth": settings.api_key is not None,
        "limits": {"max_upload_mb": settings.max_upload_mb, "max_text_chars": settings.max_text_chars,
                   "max_batch_items": settings.max_batch_items, "header_timeout": settings.header_timeout,
                   "body_timeout": settings.body_timeout, "limit_concurrency": settings.limit_concurrency},
        "batching": {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
    }
