"""Request bodies of /check and /check_batch, and the checks every field goes through before the model sees it.

Shape problems (missing field, wrong type, unknown field, not JSON) are 422, as FastAPI answers them (with each
echoed `input` shortened); values the server refuses (bad image, text too long or empty, unknown adapter, a field
sent twice) are 400 with `{"detail": "FIELD: why", "field": FIELD}`. /check also takes premise, hypothesis and
adapter from the query string, as the guide's FastAPI sketch did; a form field or JSON key of the same name wins.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections import Counter
from typing import Any, Iterable, Sequence

import anyio
import pydantic_core
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from velora.errors import VeloraError
from velora.images import ImageError, load_image
from velora.ofa.processor import OFAProcessor, TextError, is_blank
from velora.translate import ScoredTexts, non_english_warning, translate_pairs

MULTIPART, JSON = "multipart/form-data", "application/json"
DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
TEXT_FIELDS = ("premise", "hypothesis", "adapter")
ECHO_CHARS = 100  # of an invalid value echoed back in a 422
SERVE_HINT = ("start the server with --translate: a local translation model folder (e.g. ./opus-mt-zh-en), deepl, "
              "or command:CMD - see docs/chinese.md")
HOW_TO_SEND = {
    "image": "send the image as a multipart file part named image (curl -F image=@photo.jpg), or in base64 as the "
             "JSON key image",
    "hypothesis": "send hypothesis as a multipart form field, a JSON key, or in the query string "
                  "(POST /check?hypothesis=...)",
}


class InputError(HTTPException):
    """A value the server will not score; the message starts with the field's name."""

    def __init__(self, field: str, message: str, status_code: int = 400):
        super().__init__(status_code=status_code, detail=f"{field}: {message}")
        self.field = field


class CheckFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    premise: str | None = Field(None, description="Text describing the image (optional; the guide's 'premise').")
    hypothesis: str = Field(description="The statement to check against the image (and premise).")
    adapter: str | None = Field(None, description="LoRA adapter to score with; 'base' = adapters off; "
                                                  "omitted = the server's default. GET /info lists them.")


class CheckJSON(CheckFields):
    image: str = Field(description="The image file's bytes in base64 (a data: URL works too).")


class BatchJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[CheckJSON] = Field(min_length=1, description="Examples; identical images are decoded once.")


MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["image", "hypothesis"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "The image file (any format Pillow reads)."},
        **{name: {"type": "string", "description": f.description}
           for name, f in CheckFields.model_fields.items()},
    },
}
CHECK_OPENAPI = {
    "requestBody": {"required": True, "content": {
        MULTIPART: {"schema": MULTIPART_SCHEMA},
        JSON: {"schema": CheckJSON.model_json_schema()},
    }},
    "parameters": [{"name": name, "in": "query", "required": False, "schema": {"type": "string"},
                    "description": f.description + " May come in the query string; a form field or JSON key wins."}
                   for name, f in CheckFields.model_fields.items()],
}
BATCH_OPENAPI = {"requestBody": {"required": True, "content": {JSON: {"schema": {
    "type": "object", "required": ["items"], "additionalProperties": False,
    "properties": {"items": {"type": "array", "minItems": 1, "items": CheckJSON.model_json_schema(),
                             "description": BatchJSON.model_fields["items"].description}},
}}}}}


def _short(value: Any, depth: int = 0) -> Any:
    """A bounded echo of a refused value: no whole body, no upload's internals."""
    if isinstance(value, UploadFile):
        return f"<file {value.filename!r}>"
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:4 * ECHO_CHARS]).decode("utf-8", "replace")
        return text if len(value) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(value):,} bytes)"
    if isinstance(value, str):
        return value if len(value) <= ECHO_CHARS else f"{value[:ECHO_CHARS]}… ({len(value):,} characters)"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth < 2 and isinstance(value, dict):
        return {_short(str(k)): _short(v, depth + 1) for k, v in list(value.items())[:16]}
    if depth < 2 and isinstance(value, (list, tuple)):
        return [_short(v, depth + 1) for v in value[:16]]
    return f"<{type(value).__name__}>"


def public_errors(errors: Sequence[dict], limit: int = 20) -> list[dict]:
    """FastAPI's 422 `detail` list (the first `limit` errors), each `input` shortened."""
    return [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"],
             **({"input": _short(e["input"])} if e.get("input") is not None else {})} for e in errors[:limit]]


def _body_errors(error: ValidationError, prefix: tuple = ("body",)) -> list[dict]:
    errors = []
    for e in error.errors(include_url=False):
        e = {**e, "loc": (*prefix, *e["loc"])}
        if e["type"] == "missing" and e["loc"][1:] in (("image",), ("hypothesis",)):  # /check's, not an item's
            e["msg"] = f"Field required: {HOW_TO_SEND[e['loc'][-1]]}"
        errors.append(e)
    return errors


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(_body_errors(e)) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _once(pairs: Iterable[tuple[str, Any]], where: str) -> dict[str, Any]:
    counts = Counter(key for key, _ in pairs)
    for key, count in counts.items():
        if count > 1:
            raise InputError(key, f"sent {count} times{where}; send each field once")
    return dict(pairs)


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return pydantic_core.from_json(body)
    except ValueError as e:  # not JSON, or not UTF-8
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": f"Invalid JSON: {e}",
                                       "input": body}]) from None


async def parse_json(request: Request, model: type[BaseModel]) -> Any:
    return _validate(model, await read_json(request))


def _check_form(texts: dict[str, Any], image: Any) -> CheckFields:
    errors = []
    if image is None:
        errors.append({"type": "missing", "loc": ("body", "image"), "msg": f"Field required: {HOW_TO_SEND['image']}",
                       "input": None})
    elif not isinstance(image, UploadFile):
        errors.append({"type": "file_expected", "loc": ("body", "image"), "input": None,
                       "msg": "image must be a file upload (multipart part with a filename)"})
    fields = None
    try:
        fields = CheckFields.model_validate(texts)
    except ValidationError as e:
        errors = errors + _body_errors(e)
    if errors:
        raise RequestValidationError(errors)
    return fields


async def _parse_multipart(request: Request, query: dict[str, str],
                           max_part_bytes: int) -> tuple[CheckFields, bytes, str | None]:
    try:
        form = await request.form(max_files=2, max_fields=16, max_part_size=max_part_bytes)
    except StarletteHTTPException as e:  # Starlette's multipart limits (400), or the guard's 413 / 408
        if e.status_code != 400:
            raise
        raise InputError("image" if "files" in str(e.detail) else "body", str(e.detail)) from None
    try:
        parts = _once(form.multi_items(), " in the form")
        image = parts.pop("image", None)
        fields = _check_form({**query, **parts}, image)
        return fields, await image.read(), image.filename
    finally:
        await form.close()


async def parse_check(request: Request, max_part_bytes: int) -> tuple[CheckFields, bytes, str | None]:
    """(text fields, image bytes, file name) from a multipart or JSON /check request, text fields also from the
    query string (the body's win)."""
    query = _once([(k, v) for k, v in request.query_params.multi_items() if k in TEXT_FIELDS], " in the query string")
    kind = media_type(request)
    if kind == JSON:
        data = await read_json(request)
        body = _validate(CheckJSON, {**query, **data} if isinstance(data, dict) else data)
        return body, decode_base64(body.image, "image"), None
    if kind == MULTIPART:
        return await _parse_multipart(request, query, max_part_bytes)
    if not kind and not request.headers.get("content-length", "0").strip("0"):
        _check_form(query, None)  # nothing sent: name what is missing and how to send it
    raise HTTPException(status_code=415, detail=f"content type {kind or '(none)'!r} not accepted: send {MULTIPART} "
                        f"(an image file part, text fields as form fields or in the query string) or {JSON} "
                        '({"image": base64, "hypothesis": ..., "premise": ..., "adapter": ...})')


def decode_base64(text: str, field: str) -> bytes:
    text = DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(field, f"not valid base64 ({e})") from None


def check_texts(fields: CheckFields, max_chars: int, prefix: str = "") -> tuple[str | None, str]:
    """(premise or None, hypothesis), or InputError naming the field."""
    hypothesis = fields.hypothesis.strip()
    if is_blank(hypothesis):
        raise InputError(prefix + "hypothesis", "is empty (only spaces or control characters): give the statement "
                                                "to check against the image")
    premise = (fields.premise or "").strip()
    premise = None if is_blank(premise) else premise
    for name, value in (("premise", premise), ("hypothesis", hypothesis)):
        if value is not None and len(value) > max_chars:
            raise InputError(prefix + name, f"{len(value):,} characters, over the limit of {max_chars:,}")
    return premise, hypothesis


def encode_prompt(processor: OFAProcessor, premise: str | None, hypothesis: str, prefix: str = "") -> list[int]:
    """The prompt's token ids under `processor`, checked against its limits now, while the request is read (so an
    over-long text is this request's 400, never a failed batch)."""
    try:
        return processor.encode_text(hypothesis, premise)
    except TextError as e:
        raise InputError(prefix + e.field, str(e)) from None


def pick_adapter(name: str | None, loaded: list[str], default: str, field: str = "adapter") -> str:
    if name is None or not name.strip():
        return default
    if name.strip() not in loaded:
        raise InputError(field, f"unknown adapter {name.strip()!r}; this server has: {', '.join(loaded)}")
    return name.strip()


def decode_image(data: bytes, filename: str | None, processor: OFAProcessor) -> Image.Image:
    """Decode and validate an uploaded image (raises ImageError), resized by the scoring adapter's processor here,
    in the request's thread, so the model's worker only runs the model. The Predictor's own resize is then a no-op,
    and the result is identical to scoring the original file."""
    name = filename or "uploaded image"
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    source = io.BytesIO(data)
    source.name = name
    return processor.resize(load_image(source))


async def translate_texts(request: Request, premises: list[str | None], hypotheses: list[str]) -> list[ScoredTexts]:
    """The pairs as the model will score them: through the server's --translate translator (in a worker thread,
    one translation at a time), else as they came. 502 when the translator fails."""
    translator = request.app.state.translator
    if translator is None:
        return translate_pairs(None, premises, hypotheses)
    try:
        return await anyio.to_thread.run_sync(translate_pairs, translator, premises, hypotheses,
                                              limiter=request.app.state.translate_limiter)
    except VeloraError as e:
        raise HTTPException(status_code=502, detail=f"translation failed: {e}") from None


def language_fields(request: Request, texts: ScoredTexts) -> dict:
    """For the response: `translation` (with --translate: the English texts scored, the originals, the back-end)
    or `warnings` (Chinese text scored untranslated)."""
    if request.app.state.translator is not None:
        return {"translation": texts.to_dict()}
    warning = non_english_warning([texts.premise], [texts.hypothesis], hint=SERVE_HINT)
    return {"warnings": [warning]} if warning else {}
