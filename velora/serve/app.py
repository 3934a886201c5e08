"""The FastAPI app: `create_app(settings)`; its lifespan loads the Predictor, starts the batcher and warms up.

    from velora.serve import ServeSettings, create_app
    app = create_app(ServeSettings(model_path="./lora_finetuned", adapters={"strict": "./lora_strict"}))
    # uvicorn.run(app)  - or `velora serve --model_path ./lora_finetuned --adapter strict=./lora_strict`
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Sequence

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from velora import __version__
from velora.errors import VeloraError
from velora.predictor import BASE, DEFAULT_ADAPTER, Prediction, Predictor
from velora.serve.batching import Job, MicroBatcher
from velora.serve.dependencies import Service
from velora.serve.inputs import public_errors
from velora.serve.metrics import Metrics
from velora.serve.middleware import RequestGuard
from velora.serve.routers import check, health
from velora.serve.settings import ServeSettings, display_name
from velora.translate import Translator, translator_for

logger = logging.getLogger("velora.serve")
STATIC = Path(__file__).parent / "static"


def load_predictor(settings: ServeSettings) -> Predictor:
    predictor = Predictor.from_pretrained(settings.model_path, base_model=settings.base_model,
                                          device=settings.device, dtype=settings.dtype,
                                          image_size=settings.image_size, quantize=settings.quantize)
    return attach_adapters(predictor, settings.adapters)


def load_translator(settings: ServeSettings, predictor: Predictor) -> Translator | None:
    """--translate's Translator (None without it), its model loaded now on the Predictor's device."""
    translator = translator_for(vars(settings), device=str(predictor.device))
    if translator is not None:
        translator.load()
    return translator


def attach_adapters(predictor: Predictor, adapters: dict[str, str]) -> Predictor:
    """Load each `--adapter NAME=PATH` onto the predictor's base (skipping names already loaded)."""
    for name, path in adapters.items():
        if name in predictor.adapter_names:
            continue
        try:
            predictor.load_adapter(name, path)
        except (ValueError, KeyError, RuntimeError) as e:
            raise VeloraError(f"--adapter {name}={path}: does not fit the served base model "
                              f"({str(e).splitlines()[0][:200]})") from None
    return predictor


def score_jobs(predictor: Predictor, batch_size: int, jobs: Sequence[Job], adapter: str) -> list[Prediction]:
    probs = predictor.score([j.image for j in jobs], [j.prompt for j in jobs], adapter=adapter, batch_size=batch_size)
    return [Prediction.from_probs(row) for row in probs.tolist()]


def build_service(settings: ServeSettings, predictor: Predictor, metrics: Metrics) -> Service:
    # "default" is reserved for the adapter given as --model_path, so its presence says which default applies
    default = DEFAULT_ADAPTER if DEFAULT_ADAPTER in predictor.adapter_names else BASE
    batcher = MicroBatcher(partial(score_jobs, predictor, settings.max_batch_size), settings.max_batch_size,
                           settings.max_wait_ms, settings.max_queue, on_batch=metrics.observe_batch)
    metrics.info.labels(display_name(settings.model_path), ",".join(predictor.adapter_names) or "-").set(1)
    return Service(settings, predictor, batcher.start(), metrics, default,
                   anyio.CapacityLimiter(settings.decode_threads))


async def warm_up(service: Service) -> None:
    """One example per adapter through the real path (worker thread included), so the first request is not slow."""
    premise, hypothesis = "a photo", "there is an object."
    for adapter in service.adapters:
        processor = service.predictor.processor_for(adapter)
        size = processor.config.image_size
        image = Image.new("RGB", (size, size), (128, 128, 128))
        prompt = processor.encode_text(hypothesis, premise)
        await service.batcher.score(Job(image, premise, hypothesis, adapter, prompt))


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: ServeSettings = app.state.settings
    predictor = app.state.predictor or await anyio.to_thread.run_sync(load_predictor, settings)
    if app.state.translator is None and settings.translate:
        app.state.translator = await anyio.to_thread.run_sync(load_translator, settings, predictor)
    app.state.translate_limiter = anyio.CapacityLimiter(1)  # one translation at a time; others wait without a thread
    service = build_service(settings, predictor, app.state.metrics)
    app.state.service = service
    try:
        if settings.warmup:
            await warm_up(service)
        service.ready = True
        logger.info("ready: %s; adapters %s (default %s); batching up to %d examples / %g ms",
                    predictor.description, ", ".join(service.adapters), service.default_adapter,
                    settings.max_batch_size, settings.max_wait_ms)
        yield
    finally:
        service.ready = False
        await anyio.to_thread.run_sync(service.batcher.close)
        app.state.service = None
        if app.state.translator is not None:
            app.state.translator.close()
            app.state.translator = None


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body = {"detail": exc.detail}
    if getattr(exc, "field", None):
        body["field"] = exc.field
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": public_errors(exc.errors())}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def create_app(settings: ServeSettings, predictor: Predictor | None = None,
               translator: Translator | None = None) -> FastAPI:
    """The app for `settings`. Pass an already-loaded `predictor` (adapters attached) to skip loading at startup;
    it must then be used by this app only. `translator` likewise, for `settings.translate` (closed at shutdown)."""
    # FastAPIOffline: FastAPI whose /docs and /redoc pages load their JavaScript from this server, not a CDN
    app = FastAPIOffline(title="velora", version=__version__, lifespan=lifespan,
                         description="Visual entailment checks with OFA + LoRA adapters: does the image (and premise) "
                                     "entail, contradict, or say nothing about the hypothesis? The web page is at "
                                     "`/`.")
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.translator = translator
    app.state.metrics = Metrics(settings.low_confidence)
    app.state.service = None
    app.include_router(check.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.add_middleware(RequestGuard, metrics=app.state.metrics, settings=settings)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    return app
