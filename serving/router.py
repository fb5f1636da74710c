"""The OpenAI-compatible ingress: thin routes, one place that turns results into HTTP.

A route validates the request (serving.protocol), picks the variant (serving.dispatch), calls the
variant's deployment through one handle hop, and answers JSON or an SSE stream. Everything a client
can get wrong comes back as OpenAI's error body with its status code.
"""

import asyncio
import logging
import time
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve._private.logging_utils import ServeContextFilter
from starlette.exceptions import HTTPException as StarletteHTTPException

from quantserve.config import ServerConfig
from quantserve.constants import FALLBACK_HEADER, VARIANT_HEADER
from serving import protocol as p
from serving.admission import AdmissionMiddleware, AdmissionPolicy
from serving.auth import ApiKeys, read_keys
from serving.catalog import ServedVariant
from serving.dispatch import FallbackChain, VariantDirectory, VariantState
from serving.embeddings import embedding_response
from serving.generation import Deadline, Generation, full_response, stream_body
from serving.limits import check_embedding, check_generation
from serving.log_queue import log_off_loop
from serving.loopback import keep_serve_grpc_on_loopback
from serving.metrics import CONTENT_TYPE, QuantserveMetrics
from serving.metrics_renderer import MetricsRenderer
from serving.rate_limits import RateLimiter, SharedRateLimiter
from serving.request_meter import RequestMeter
from serving.responses import error_response, json_response
from serving.serve_state import SERVE_FAILURES, serve_deployments

logger = logging.getLogger("ray.serve.quantserve.router")  # under ray.serve: Serve's log lines carry request_id
app = FastAPI(title="quantserve", description="OpenAI-compatible API over quantized model variants")
app.add_middleware(AdmissionMiddleware)
# What the /v1 routes may answer besides 200, each with OpenAI's error body (documented in /openapi.json).
ERRORS = {status: {"model": p.ErrorResponse, "description": description} for status, description in {
    400: "invalid request, or over a server limit", 401: "missing or wrong API key", 404: "unknown model",
    413: "request body too large", 429: "rate limit reached (Retry-After)", 502: "the replica failed mid-request",
    503: "no healthy replica, overloaded or shutting down (Retry-After)", 504: "request timeout"}.items()}
# Generation routes answer JSON, or server-sent events when the request asks for `stream`.
GENERATION_RESPONSES = {**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE if stream"}}


@app.exception_handler(p.ApiError)
async def _api_error(_: Request, exc: p.ApiError) -> JSONResponse:
    return error_response(exc)


UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def error_param(location: tuple) -> str | None:
    """The request field a validation error is about: `messages.0.content`, without pydantic's union-member tags
    (`prompt.function-after[...]`, `stop.str`) that follow the field's name."""
    path = []
    for part in location:
        if part == "body":
            continue
        if isinstance(part, str) and ("[" in part or part in UNION_TAGS):
            break
        path.append(str(part))
    return ".".join(path) or None


REFUSALS = {"extra_forbidden", p.UNSUPPORTED}


def validation_error(errors: list[dict]) -> p.ApiError:
    """The 400 for a body that failed validation: about a refused field (unknown, or not implemented) if any, else
    about the first error, naming the field (a model-level check names it in its context)."""
    first = next((e for e in errors if e["type"] in REFUSALS), errors[0])
    param = error_param(first["loc"]) or (first.get("ctx") or {}).get("param")
    if first["type"] == "json_invalid":
        return p.ApiError(400, "The request body is not valid JSON", code="invalid_request")
    if first["type"] == "extra_forbidden":
        return p.ApiError(400, f"Unrecognized request argument supplied: {param}", param=param, code=p.UNSUPPORTED)
    if first["type"] == p.UNSUPPORTED:
        return p.ApiError(400, f"Unsupported parameter: {param}: {first['msg']}", param=param, code=p.UNSUPPORTED)
    return p.ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_request")


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    error = validation_error(exc.errors())
    admission: AdmissionPolicy | None = getattr(request.app.state, "admission", None)
    if admission is not None:
        admission.refused(request.url.path, error)
    return error_response(error)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(p.ApiError(exc.status_code, str(exc.detail)))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error: %s", exc)
    return error_response(p.ApiError(500, "internal error; see the router's log"))


def caller(body: p.WireModel) -> str:
    """What the request says about its end user (`user`, `safety_identifier`), for the log line."""
    named = {k: getattr(body, k, None) for k in ("user", "safety_identifier")}
    return "".join(f", {k} {v!r}" for k, v in named.items() if v)


def openapi_with_models(variants: list[ServedVariant]) -> dict:
    """/openapi.json with the `model` field of each request listing the names this server answers to."""
    app.openapi_schema = None
    schema = app.openapi()
    for request, kind in (("ChatCompletionRequest", "chat"), ("CompletionRequest", "chat"),
                          ("EmbeddingRequest", "embedding")):
        names = sorted({n for v in variants if v.kind == kind for n in ((v.id, v.model) if v.is_default else (v.id,))})
        schema["components"]["schemas"][request]["properties"]["model"]["enum"] = names
    return schema


@serve.deployment(max_ongoing_requests=512, graceful_shutdown_wait_loop_s=1)
@serve.ingress(app)
class Router:
    """The OpenAI ingress. `scales_to_zero`: the variants configured with `min_replicas: 0`, which are ready to
    scale, not down, while no replica runs. `rate_limit_store`: the RateLimitStore's handle when the router may
    run more than one replica. Its deployment options (replicas, shutdown grace, queue) come from the builder."""

    def __init__(self, variants: list[dict], handles: dict[str, object], server: dict | None = None,
                 scales_to_zero: list[str] = (), rate_limit_store: object | None = None) -> None:
        keep_serve_grpc_on_loopback()
        # Serve's handlers (its log file, stderr) run in a thread; the request id is read where a record is made.
        self._log_listener = log_off_loop(logging.getLogger("ray.serve"), [ServeContextFilter()])
        self.metrics_renderer = MetricsRenderer()
        server_config = ServerConfig.model_validate(server or {})
        self.limits = server_config.limits
        self.metrics = QuantserveMetrics()
        keys = ApiKeys(read_keys(server_config.auth))
        self.rate_limiter = RateLimiter(server_config.rate_limits, keys.limits)
        if rate_limit_store is not None:  # more than one router replica: the buckets are shared
            self.rate_limiter = SharedRateLimiter(rate_limit_store, self.rate_limiter)
        self.admission = AdmissionPolicy(keys, self.rate_limiter, self.limits, self.metrics)
        app.state.admission = self.admission
        logger.info("API keys: %s; rate limits: %s", f"{len(keys)} configured" if keys.enabled else "off",
                    server_config.rate_limits.model_dump(exclude_none=True) or "off")
        self.variants = [ServedVariant.from_dict(v) for v in variants]
        self.directory = VariantDirectory(self.variants, handles, SERVE_FAILURES, set(scales_to_zero))
        app.openapi_schema = openapi_with_models(self.variants)
        self._probe_task: asyncio.Task | None = None

    def _start_probing(self) -> None:
        if self._probe_task is None:
            app_name = serve.get_replica_context().app_name
            self._probe_task = asyncio.get_running_loop().create_task(
                self.directory.probe_forever(partial(serve_deployments, app_name), self._publish_readiness))

    def _publish_readiness(self, state: VariantState) -> None:
        v = state.variant
        self.metrics.set_variant_ready(v.model, v.variant, v.backend, state.ready)

    async def check_health(self) -> None:
        self._start_probing()

    async def drain(self) -> int:
        """Stop taking /v1 requests (503) and report not ready; returns the requests still in flight."""
        self.admission.draining = True
        return self.admission.in_flight

    async def in_flight(self) -> int:
        return self.admission.in_flight

    def __del__(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        self.metrics_renderer.close()
        if self._log_listener is not None:
            self._log_listener.stop()  # writes what is still queued

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "a model cannot be answered (its default variant and its "
                                                       "fallbacks are down), or the server drains"}})
    async def ready(self) -> JSONResponse:
        """200 while every model's default variant can be answered, by itself or a fallback. `variants`: whether
        each variant can answer now (a variant scaled to zero can: a request scales it up); `states`: Serve's view
        of each (running, scaled_to_zero, not_deployed, starting, unhealthy, ...)."""
        self._start_probing()
        models = self.directory.models_answerable()
        ready = all(models.values()) and not self.admission.draining
        states = self.directory.states
        return JSONResponse({"ready": ready, "draining": self.admission.draining, "models": models,
                             "variants": {vid: s.ready for vid, s in states.items()},
                             "states": {vid: s.status for vid, s in states.items()}},
                            status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text exposition"}})
    async def metrics_endpoint(self) -> Response:
        return Response(await self.metrics_renderer.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", responses={k: ERRORS[k] for k in (401, 429, 503)})
    async def models(self) -> p.ModelList:
        created = int(time.time())
        cards = []
        for v in self.variants:
            facts = self.directory.states[v.id].facts
            meta = {"backend": v.backend, "bits": v.bits, "format": v.format, "size_bytes": v.size_bytes,
                    "price_per_hour": v.price_per_hour, "hardware_profile": v.hardware_profile, "kind": v.kind,
                    "perplexity": v.perplexity, "max_context": v.max_context, "fallbacks": list(v.fallbacks),
                    "engine": None if not facts or facts.get("pending") else facts}
            if v.is_default:
                cards.append(p.ModelCard(id=v.model, created=created, default_variant=v.variant, **meta))
            cards.append(p.ModelCard(id=v.id, created=created, root=v.model, **meta))
        return p.ModelList(data=cards)

    @app.post("/v1/chat/completions", response_model=p.ChatCompletionResponse, responses=GENERATION_RESPONSES)
    async def chat_completions(self, body: p.ChatCompletionRequest, request: Request) -> Response:
        return await self._generate(request, body, "/v1/chat/completions")

    @app.post("/v1/completions", response_model=p.CompletionResponse, responses=GENERATION_RESPONSES)
    async def completions(self, body: p.CompletionRequest, request: Request) -> Response:
        return await self._generate(request, body, "/v1/completions")

    @app.post("/v1/embeddings", response_model=p.EmbeddingResponse, responses=ERRORS)
    async def embeddings(self, body: p.EmbeddingRequest, request: Request) -> Response:
        self._start_probing()
        check_embedding(body, self.limits)
        state = self.directory.resolve(body.model, "embedding")
        logger.info("/v1/embeddings for %s, key %s%s", state.variant.id, request.state.key_id, caller(body))
        meter = self._meter(request, "/v1/embeddings", state)
        response, answered = await embedding_response(FallbackChain(self.directory, state), body, meter,
                                                       Deadline(self.limits.request_timeout_s))
        return json_response(response, headers={VARIANT_HEADER: answered.variant.variant})

    def _meter(self, request: Request, endpoint: str, state: VariantState) -> RequestMeter:
        """The request's meter: in flight from now until its response is complete or has failed."""
        key_id = request.state.key_id
        return RequestMeter(self.metrics, endpoint, state.variant,
                            charge=lambda tokens: self.rate_limiter.charge(key_id, tokens))

    async def _generate(self, request: Request, body: p.ChatCompletionRequest | p.CompletionRequest,
                        endpoint: str) -> Response:
        self._start_probing()
        check_generation(body, self.limits)
        state = self.directory.resolve(body.model, "chat")
        logger.info("%s for %s, key %s%s", endpoint, state.variant.id, request.state.key_id, caller(body))
        generation = Generation(FallbackChain(self.directory, state), body, self._meter(request, endpoint, state),
                                self.limits)
        answered = await generation.start()
        headers = {VARIANT_HEADER: answered.variant.variant}
        if answered is not state:
            headers[FALLBACK_HEADER] = state.variant.variant
        if body.stream:
            return StreamingResponse(stream_body(generation), media_type="text/event-stream", headers=headers)
        return json_response(full_response(generation), headers=headers)
