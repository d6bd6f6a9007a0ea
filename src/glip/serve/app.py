"""The HTTP application: ``POST /detect``, ``GET /health`` and ``GET /`` (the web page).

Every refused request gets a 4xx status and ``{"error": "<one line>"}``; nothing a request sends
is used as a path: the image is decoded from memory and the page is a file of the package.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from glip.device import torch_threads
from glip.pipeline import GLIP
from glip.serve.batching import BatchQueue, QueueClosed, QueueFull
from glip.serve.detector import BatchDetector, DetectJob
from glip.serve.inputs import MAX_PROMPT_CHARS, BadRequest, decode_image, parse_prompt, parse_threshold

logger = logging.getLogger(__name__)

# Room in the request body for the form fields and multipart boundaries beyond the image itself.
FORM_OVERHEAD_BYTES = 64 * 1024
# A refused upload is read on and discarded up to this many bytes, so that a client still sending it
# reads the 413 instead of a reset connection; past it the connection is simply closed.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
FIELDS = ("image", "classes", "caption", "spans", "threshold")

# The page loads nothing from elsewhere (no CDN): the browser is told to refuse anything else.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches and what it accepts.

    Attributes:
        max_batch: most requests per forward pass.
        batch_wait_ms: how long a request waits for others with the same prompt and image size.
        max_upload_mb: largest image upload (MiB); a larger one gets 413.
        max_queued: requests waiting beyond this get 503 (the client may retry).
        threads: torch CPU threads of the worker (0: torch's default).
    """

    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_queued: int = 256
    threads: int = 0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class _UploadTooLarge(Exception):
    """The request body passed the limit while it was being read."""


def page_html() -> str:
    """The web page (a package data file, read once)."""
    return resources.files("glip.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(model: GLIP, options: ServeOptions = ServeOptions(), model_name: str = "model") -> FastAPI:
    """The FastAPI application serving ``model``; its batching worker starts and stops with the app.

    Args:
        model: a loaded model in eval mode (shared by every request, used by one thread).
        options: see :class:`ServeOptions`.
        model_name: what ``/health`` calls the model.
    """
    detector = BatchDetector(model)
    page = page_html()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.queue = BatchQueue(detector, options.max_batch, options.batch_wait_ms / 1000, options.max_queued,
                                     worker_setup=lambda: torch_threads(options.threads))
        try:
            yield
        finally:
            app.state.queue.close()

    # No /docs: Swagger UI loads from a CDN, and the page must work offline.
    app = FastAPI(title="glip serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        queue: BatchQueue = request.app.state.queue
        return {"status": "ok", "model": model_name, "device": str(model.device),
                "dtype": str(model.inference_dtype).removeprefix("torch."),
                "default_threshold": model.default_threshold, "max_batch": options.max_batch,
                "batch_wait_ms": options.batch_wait_ms, "max_upload_bytes": options.max_upload_bytes,
                "max_prompt_chars": MAX_PROMPT_CHARS, "queued": queue.queued, **asdict(queue.stats)}

    @app.post("/detect")
    async def detect(request: Request) -> JSONResponse:
        """multipart/form-data: ``image`` (file), ``classes`` or ``caption`` [+ ``spans``], ``threshold``."""
        limit = options.max_upload_bytes
        async with _limited_form(request, limit) as form:
            data = await _image_bytes(form, limit)
            prompt = parse_prompt(_text(form, "classes"), _text(form, "caption"), _text(form, "spans"))
            threshold = parse_threshold(_text(form, "threshold"), model.default_threshold)
        image = await run_in_threadpool(decode_image, data)
        job = DetectJob(image, prompt, threshold)
        future = request.app.state.queue.submit(detector.batch_key(job), job)
        return JSONResponse(await asyncio.wrap_future(future))

    return app


@asynccontextmanager
async def _limited_form(request: Request, limit: int) -> AsyncIterator[FormData]:
    """The parsed multipart form, its body refused (413) once past ``limit`` + the form overhead."""
    body_limit = limit + FORM_OVERHEAD_BYTES
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None
    if declared > body_limit:
        await _drain(request.receive)
        raise BadRequest(_too_large_message(limit), status=413)
    limited = Request(request.scope, _counting_receive(request.receive, body_limit))
    try:
        form = await limited.form(max_files=1, max_fields=len(FIELDS), max_part_size=4 * MAX_PROMPT_CHARS + 1024)
    except _UploadTooLarge:
        await _drain(request.receive)
        raise BadRequest(_too_large_message(limit), status=413) from None
    try:
        unknown = sorted(set(form.keys()) - set(FIELDS))
        if unknown:
            raise BadRequest(f"unknown form field {unknown[0]!r} (expected {', '.join(FIELDS)})")
        yield form
    finally:
        await form.close()


def _counting_receive(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    received = 0

    async def counted() -> dict:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _UploadTooLarge
        return message

    return counted


async def _drain(receive: Callable[[], Awaitable[dict]]) -> None:
    """Read and discard the rest of a refused body (up to :data:`DRAIN_LIMIT_BYTES`)."""
    drained = 0
    while drained < DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large_message(limit: int) -> str:
    return f"upload too large: the limit is {limit / 2**20:g} MiB (glip serve --max-upload-mb)"


async def _image_bytes(form: FormData, limit: int) -> bytes:
    upload = form.get("image")
    if upload is None:
        raise BadRequest("no image: send the picture as the multipart file field 'image'")
    if not isinstance(upload, UploadFile):
        raise BadRequest("image must be a file upload (multipart/form-data), not a text field")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadRequest(_too_large_message(limit), status=413)
    return data


def _text(form: FormData, name: str) -> str | None:
    """A text field, or None when absent."""
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a text field, not a file")
    return value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "<one line>"}``: 4xx for the client's, 503 when busy, 500 for ours."""

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, error: QueueFull) -> JSONResponse:
        return _error(503, f"server busy: {error}; retry shortly")

    @app.exception_handler(QueueClosed)
    async def stopping(request: Request, error: QueueClosed) -> JSONResponse:
        return _error(503, str(error))

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request %s failed", request.url.path)
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details")
