"""Request bodies of /check and /check_batch, and the checks every field goes through before the model sees it.

Shape problems (missing field, wrong type, unknown field, not JSON) are 422, as FastAPI answers them; values the
server refuses (bad image, text too long, unknown adapter) are 400 with `{"detail": "FIELD: why", "field": FIELD}`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from velora.images import ImageError, load_image

MULTIPART, JSON = "multipart/form-data", "application/json"
DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


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
CHECK_OPENAPI = {"requestBody": {"required": True, "content": {
    MULTIPART: {"schema": MULTIPART_SCHEMA},
    JSON: {"schema": CheckJSON.model_json_schema()},
}}}


def _validation_error(error: ValidationError, prefix: tuple = ("body",)) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (*prefix, *e["loc"])} for e in error.errors(include_url=False)])


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def parse_json(request: Request, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise _validation_error(e) from None


async def parse_check(request: Request, max_text_bytes: int) -> tuple[CheckFields, bytes, str | None]:
    """(text fields, image bytes, file name) from a multipart or JSON /check request."""
    kind = media_type(request)
    if kind == JSON:
        body = await parse_json(request, CheckJSON)
        return body, decode_base64(body.image, "image"), None
    if kind != MULTIPART:
        raise HTTPException(status_code=415, detail=f"content type {kind or '(none)'!r} not accepted: send "
                            f"{MULTIPART} (image file + text fields) or {JSON} (base64 image)")
    async with request.form(max_files=1, max_fields=16, max_part_size=max_text_bytes) as form:
        image = form.get("image")
        texts = {key: value for key, value in form.multi_items() if key != "image"}
        errors = []
        if image is None:
            errors.append({"type": "missing", "loc": ("body", "image"), "msg": "Field required", "input": None})
        elif not isinstance(image, UploadFile):
            errors.append({"type": "file_expected", "loc": ("body", "image"), "input": None,
                           "msg": "image must be a file upload (multipart part with a filename)"})
        try:
            fields = CheckFields.model_validate(texts)
        except ValidationError as e:
            errors = errors + _validation_error(e).errors()
        if errors:
            raise RequestValidationError(errors)
        return fields, await image.read(), image.filename


def decode_base64(text: str, field: str) -> bytes:
    text = DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(field, f"not valid base64 ({e})") from None


def check_texts(fields: CheckFields, max_chars: int, prefix: str = "") -> tuple[str | None, str]:
    """(premise or None, hypothesis), or InputError naming the field."""
    hypothesis = fields.hypothesis.strip()
    if not hypothesis:
        raise InputError(prefix + "hypothesis", "is empty: give the statement to check against the image")
    premise = (fields.premise or "").strip() or None
    for name, value in (("premise", premise), ("hypothesis", hypothesis)):
        if value is not None and len(value) > max_chars:
            raise InputError(prefix + name, f"{len(value):,} characters, over the limit of {max_chars:,}")
    return premise, hypothesis


def pick_adapter(name: str | None, loaded: list[str], default: str, field: str = "adapter") -> str:
    if name is None or not name.strip():
        return default
    if name.strip() not in loaded:
        raise InputError(field, f"unknown adapter {name.strip()!r}; this server has: {', '.join(loaded)}")
    return name.strip()


def decode_image(data: bytes, filename: str | None, size: int) -> Image.Image:
    """Decode and validate an uploaded image (raises ImageError), resized to the model's input size here, in the
    request's thread, so the model's worker only runs the model. The Predictor's own resize is then a no-op, and
    the result is identical to scoring the original file."""
    name = filename or "uploaded image"
    if not data:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    source = io.BytesIO(data)
    source.name = name
    image = load_image(source)
    return image.resize((size, size), resample=Image.BICUBIC)
