"""POST /check (one image, multipart or JSON) and POST /check_batch (many, JSON).

The handlers are `async def` on purpose: they only await (the body, image decoding in a bounded thread pool, the
batcher's future), so a thousand waiting requests hold no threads; the model runs in the batcher's one worker.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from PIL import Image
from pydantic import BaseModel, Field

from velora.errors import VeloraError
from velora.images import ImageError
from velora.ofa.processor import OFAProcessor
from velora.serve.batching import BatcherClosed, Job, QueueFull, Scored
from velora.serve.dependencies import Service, get_service, require_api_key
from velora.serve.inputs import (BATCH_OPENAPI, CHECK_OPENAPI, BatchJSON, InputError, check_texts, decode_base64,
                                 decode_image, encode_prompt, language_fields, parse_check, parse_json, pick_adapter,
                                 translate_texts)
from velora.serve.memory import release_memory
from velora.translate import ScoredTexts

router = APIRouter(tags=["check"], dependencies=[Depends(require_api_key)])


class TranslationInfo(BaseModel):
    premise: str | None = Field(None, description="The premise scored (English).")
    hypothesis: str = Field(description="The hypothesis scored (English).")
    premise_original: str | None = Field(None, description="The premise as sent.")
    hypothesis_original: str = Field(description="The hypothesis as sent.")
    translated_by: str | None = Field(None, description="The back-end that translated; null: nothing needed it.")
    glossary_terms_lost: list[str] | None = Field(None, description="Glossary terms missing from the translation.")


class CheckResult(BaseModel):
    relation: str = Field(description="The most probable label: entailment, contradiction or neutral.")
    score: float = Field(description="Its probability.")
    probs: dict[str, float] = Field(description="All three probabilities (they sum to 1).")
    adapter: str = Field(description="The adapter that scored ('base' = adapters off).")
    batch_size: int = Field(description="Examples scored in the same model call (micro-batching).")
    latency_ms: float | None = Field(None, description="Server time for this request, body read to answer.")
    translation: TranslationInfo | None = Field(None, description="With `velora serve --translate`: the English "
                                                                  "texts scored and the texts as sent.")
    warnings: list[str] | None = Field(None, description="E.g. Chinese text scored untranslated (no --translate).")


class ItemResult(CheckResult):
    index: int
    relation: str | None = None
    score: float | None = None
    probs: dict[str, float] | None = None
    adapter: str | None = None
    batch_size: int | None = None
    error: str | None = Field(None, description="Why this item was not scored; the others still are.")
    field: str | None = Field(None, description="The field at fault, e.g. items[3].image.")


class BatchResult(BaseModel):
    results: list[ItemResult]
    errors: int = Field(description="Items not scored (each has `error` and `field`).")
    latency_ms: float


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None


ERRORS = {code: {"model": ErrorBody, "description": why} for code, why in {
    400: "a value the server refuses: not an image, truncated, too many pixels, text too long or empty, unknown "
         "adapter, a field sent twice",
    401: "missing or wrong API key",
    408: "the body did not arrive in time (--body_timeout)",
    413: "request body over --max_upload_mb",
    415: "neither multipart/form-data nor application/json",
    503: "queue full, over --limit_concurrency, or server starting/stopping; retry after the Retry-After seconds",
}.items()}


def _result(scored: Scored, adapter: str) -> dict:
    p = scored.prediction
    return dict(relation=p.label, score=p.confidence, probs=p.probabilities, adapter=adapter,
                batch_size=scored.batch_size)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _decode_and_release(limiter: anyio.CapacityLimiter, data: bytes, filename: str | None,
                        processor: OFAProcessor) -> Image.Image:
    try:
        return decode_image(data, filename, processor)
    finally:
        if limiter.borrowed_tokens <= 1:  # the last decode running: give what decodes freed back to the OS
            release_memory()


async def _decode(service: Service, data: bytes, filename: str | None, adapter: str) -> Image.Image:
    """The image decoded and resized for `adapter`'s processor, in the bounded decode pool."""
    limiter = service.decode_limiter
    return await anyio.to_thread.run_sync(_decode_and_release, limiter, data, filename, service.processor(adapter),
                                          limiter=limiter)


def _submit(service: Service, jobs: list[Job]) -> list[Future]:
    futures: list[Future] = []
    try:
        for job in jobs:
            futures.append(service.batcher.submit(job))
    except QueueFull as e:
        for future in futures:
            future.cancel()
        raise HTTPException(status_code=503, detail=f"server busy ({e}); retry shortly",
                            headers={"Retry-After": "1"}) from None
    except BatcherClosed as e:
        raise HTTPException(status_code=503, detail=str(e), headers={"Retry-After": "1"}) from None
    return futures


@router.post("/check", response_model=CheckResult, response_model_exclude_none=True, responses=ERRORS,
             openapi_extra=CHECK_OPENAPI, summary="Check one image against a hypothesis")
async def check(request: Request, service: Service = Depends(get_service)) -> CheckResult:
    """Send `multipart/form-data` (`image` file, `premise`, `hypothesis`, optional `adapter`) or JSON with the
    image in base64; the text fields may also come in the query string (a form field or JSON key wins). Answers
    the relation, its score and all three probabilities."""
    start = time.perf_counter()
    settings = service.settings
    with service.batcher.incoming(getattr(request.state, "arrival", None)):
        # text parts may be as long as the body: check_texts then names the field and the character limit
        fields, data, filename = await parse_check(request, max_part_bytes=settings.max_body_bytes)
        premise, hypothesis = check_texts(fields, settings.max_text_chars)
        (texts,) = await translate_texts(request, [premise], [hypothesis])
        if texts.error:
            raise HTTPException(status_code=502, detail=f"translation failed: {texts.error}")
        adapter = pick_adapter(fields.adapter, service.adapters, service.default_adapter)
        prompt = encode_prompt(service.processor(adapter), texts.premise, texts.hypothesis)
        try:
            image = await _decode(service, data, filename, adapter)
        except ImageError as e:
            raise InputError("image", str(e)) from None
    (future,) = _submit(service, [Job(image, texts.premise, texts.hypothesis, adapter, prompt)])  # not in incoming()
    try:
        scored = await asyncio.wrap_future(future)
    except VeloraError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    service.metrics.observe_prediction(adapter, scored.prediction)
    result = CheckResult(**_result(scored, adapter), latency_ms=_ms(start),
                         **language_fields(request, texts))
    request.state.log = (f"adapter={adapter} relation={result.relation} score={result.score:.3f} "
                         f"batch={result.batch_size}")
    return result


async def _item_texts(request: Request, items: list, limit: int, results: list) -> dict[int, ScoredTexts]:
    """{index: texts to score} of the items whose texts pass the checks (and translate, with --translate, in one
    call for all); the others get their error in `results`."""
    checked: dict[int, tuple[str | None, str]] = {}
    for i, item in enumerate(items):
        try:
            checked[i] = check_texts(item, limit, f"items[{i}].")
        except InputError as e:
            results[i] = ItemResult(index=i, error=e.detail, field=e.field)
    scored = await translate_texts(request, [p for p, _ in checked.values()], [h for _, h in checked.values()])
    for i, texts in zip(list(checked), scored):
        if texts.error:
            results[i] = ItemResult(index=i, error=f"items[{i}].{texts.error}", field=f"items[{i}]")
    return {i: texts for i, texts in zip(checked, scored) if not texts.error}


async def _batch_jobs(service: Service, request: Request, items: list, results: list
                      ) -> tuple[list[tuple[int, Job]], dict[int, ScoredTexts]]:
    """Check and decode every item: a bad one gets its error in `results`, good ones become (index, Job), their
    texts as scored beside. Identical image strings are decoded once per image size, into one image object, so the
    Predictor shares its features."""
    texts = await _item_texts(request, items, service.settings.max_text_chars, results)
    checked: list[tuple[int, str | None, str, str, list[int], tuple]] = []  # ..., adapter, prompt, image key
    raw: dict[str, bytes] = {}
    to_decode: dict[tuple, str] = {}  # (image text, image size) -> an adapter needing that size
    for i, item in enumerate(items):
        if i not in texts:
            continue
        prefix = f"items[{i}]."
        premise, hypothesis = texts[i].premise, texts[i].hypothesis
        try:
            adapter = pick_adapter(item.adapter, service.adapters, service.default_adapter, prefix + "adapter")
            prompt = encode_prompt(service.processor(adapter), premise, hypothesis, prefix)
            if item.image not in raw:
                raw[item.image] = decode_base64(item.image, prefix + "image")
        except InputError as e:
            results[i] = ItemResult(index=i, error=e.detail, field=e.field)
            continue
        key = (item.image, service.processor(adapter).config.image_size)
        to_decode.setdefault(key, adapter)
        checked.append((i, premise, hypothesis, adapter, prompt, key))
    decoded = await asyncio.gather(*(_decode(service, raw[text], None, adapter)
                                     for (text, _), adapter in to_decode.items()), return_exceptions=True)
    images = dict(zip(to_decode, decoded))
    jobs = []
    for i, premise, hypothesis, adapter, prompt, key in checked:
        image = images[key]
        if isinstance(image, ImageError):
            results[i] = ItemResult(index=i, error=f"items[{i}].image: {image}", field=f"items[{i}].image")
        elif isinstance(image, BaseException):
            raise image
        else:
            jobs.append((i, Job(image, premise, hypothesis, adapter, prompt)))
    return jobs, texts


@router.post("/check_batch", response_model=BatchResult, response_model_exclude_none=True, responses=ERRORS,
             openapi_extra=BATCH_OPENAPI, summary="Check many examples in one request")
async def check_batch(request: Request, service: Service = Depends(get_service)) -> BatchResult:
    """JSON `{"items": [{"image": base64, "premise": ..., "hypothesis": ..., "adapter": ...}, ...]}`. Items are
    answered in order; a bad item gets `error` + `field` and the others are still scored. Repeat the same image
    string for several hypotheses: it is decoded once and its visual features shared."""
    start = time.perf_counter()
    limit = service.settings.max_batch_items
    with service.batcher.incoming(getattr(request.state, "arrival", None)):
        body: BatchJSON = await parse_json(request, BatchJSON)  # read here, after the API key check, not before
        if len(body.items) > limit:
            raise InputError("items", f"{len(body.items)} items, over the limit of {limit} per request; "
                                      "send them in several requests")
        results: list[ItemResult | None] = [None] * len(body.items)
        jobs, texts = await _batch_jobs(service, request, body.items, results)
    futures = _submit(service, [job for _, job in jobs])
    scored_all = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
    for (i, job), scored in zip(jobs, scored_all):
        if isinstance(scored, VeloraError):
            results[i] = ItemResult(index=i, error=f"items[{i}]: {scored}", field=f"items[{i}]")
        elif isinstance(scored, BaseException):
            raise scored
        else:
            service.metrics.observe_prediction(job.adapter, scored.prediction)
            results[i] = ItemResult(index=i, **_result(scored, job.adapter),
                                    **language_fields(request, texts[i]))
    errors = sum(r.error is not None for r in results)
    request.state.log = f"items={len(results)} errors={errors}"
    return BatchResult(results=results, errors=errors, latency_ms=_ms(start))
