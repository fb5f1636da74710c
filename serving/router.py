"""The OpenAI-compatible ingress: thin routes, one place that turns results into HTTP.

A route validates the request (serving.protocol), picks the variant (serving.dispatch), calls the
variant's deployment through one handle hop, and answers JSON or an SSE stream. Everything a client
can get wrong comes back as OpenAI's error body with its status code.
"""

import asyncio
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import protocol as p
from serving.catalog import ServedVariant
from serving.config import LimitsConfig
from serving.dispatch import VariantDirectory, VariantState
from serving.embeddings import embedding_response
from serving.generation import Generation, stream_body
from serving.limits import check_body_size, check_embedding, check_generation
from serving.metrics import CONTENT_TYPE, QuantserveMetrics, render_metrics

logger = logging.getLogger("quantserve.router")
VARIANT_HEADER = "x-quantserve-variant"
app = FastAPI(title="quantserve", description="OpenAI-compatible API over quantized model variants")


def error_response(error: p.ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@app.exception_handler(p.ApiError)
async def _api_error(_: Request, exc: p.ApiError) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"] if part != "body"]
    param = ".".join(location) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    if first["type"] == "json_invalid":
        message, param = "The request body is not valid JSON", None
    return error_response(p.ApiError(400, message, param=param, code="invalid_request"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(p.ApiError(exc.status_code, str(exc.detail)))


@app.middleware("http")
async def _body_size_limit(request: Request, call_next):
    limits = getattr(request.app.state, "limits", None)
    if limits is not None and request.method == "POST":
        try:
            check_body_size(request.headers.get("content-length"), limits)
        except p.ApiError as exc:
            return error_response(exc)
    return await call_next(request)


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error: %s", exc)
    return error_response(p.ApiError(500, "internal error; see the router's log"))


@serve.deployment(max_ongoing_requests=512, graceful_shutdown_timeout_s=10, graceful_shutdown_wait_loop_s=1)
@serve.ingress(app)
class Router:
    def __init__(self, variants: list[dict], handles: dict[str, object], limits: dict | None = None) -> None:
        self.limits = LimitsConfig.model_validate(limits or {})
        app.state.limits = self.limits
        self.variants = [ServedVariant.from_dict(v) for v in variants]
        self.directory = VariantDirectory(self.variants, handles)
        self.metrics = QuantserveMetrics()
        self._probe_task: asyncio.Task | None = None

    def _start_probing(self) -> None:
        if self._probe_task is None:
            self._probe_task = asyncio.get_running_loop().create_task(
                self.directory.probe_forever(self._publish_readiness))

    def _publish_readiness(self, state: VariantState) -> None:
        v = state.variant
        self.metrics.set_variant_ready(v.model, v.variant, v.backend, state.ready)

    async def check_health(self) -> None:
        self._start_probing()

    def __del__(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        self._start_probing()
        states = {vid: s.ready for vid, s in self.directory.states.items()}
        return JSONResponse({"ready": all(states.values()), "variants": states},
                            status_code=200 if all(states.values()) else 503)

    @app.get("/metrics")
    async def metrics_endpoint(self) -> Response:
        return Response(render_metrics(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(self) -> p.ModelList:
        created = int(time.time())
        cards = []
        for v in self.variants:
            meta = {"backend": v.backend, "bits": v.bits, "format": v.format, "size_bytes": v.size_bytes,
                    "price_per_hour": v.price_per_hour, "hardware_profile": v.hardware_profile, "kind": v.kind,
                    "perplexity": v.perplexity, "max_context": v.max_context, "fallbacks": list(v.fallbacks)}
            if v.is_default:
                cards.append(p.ModelCard(id=v.model, created=created, default_variant=v.variant, **meta))
            cards.append(p.ModelCard(id=v.id, created=created, root=v.model, **meta))
        return p.ModelList(data=cards)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: p.ChatCompletionRequest) -> Response:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return await self._generate(body, "/v1/chat/completions", {"messages": messages}, chat=True)

    @app.post("/v1/completions")
    async def completions(self, body: p.CompletionRequest) -> Response:
        return await self._generate(body, "/v1/completions", {"prompt": body.prompt_text()}, chat=False)

    @app.post("/v1/embeddings")
    async def embeddings(self, body: p.EmbeddingRequest) -> Response:
        self._start_probing()
        check_embedding(body, self.limits)
        state = self.directory.resolve(body.model, "embedding")
        response, answered = await embedding_response(self.directory, state, body, self.metrics)
        return JSONResponse(response.model_dump(), headers={VARIANT_HEADER: answered.variant.variant})

    async def _generate(self, body, endpoint: str, prompt: dict, chat: bool) -> Response:
        self._start_probing()
        if body.ignored_fields():
            logger.info("ignored request fields: %s", ", ".join(body.ignored_fields()))
        check_generation(body, self.limits)
        state = self.directory.resolve(body.model, "chat")
        generation = Generation(self.directory, state, body, prompt, chat, endpoint, self.metrics,
                                self.limits.request_timeout_s)
        answered = await generation.start()
        headers = {VARIANT_HEADER: answered.variant.variant}
        if answered is not state:
            headers["x-quantserve-fallback-from"] = state.variant.variant
        if body.stream:
            return StreamingResponse(stream_body(generation), media_type="text/event-stream", headers=headers)
        return JSONResponse((await generation.full_response()).model_dump(), headers=headers)
