"""Ray Serve deployments that host engines: one deployment per served variant.

A text replica exposes `generate`, streamed through a streaming handle for streamed requests: it takes a
`GenerationRequest` and yields the engine's `GenerationOutput`s as they are; a refusal or a failure is one
`ApiError`, yielded as the last item (the router answers it with its status). `complete`, a unary call for
non-streaming requests, returns the outputs merged into one `GenerationResult` with their timing, or the
`ApiError`. The embedding replica's `embed` returns an `EmbeddingOutput`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ray import serve

from serving.catalog import ServedVariant
from serving.engines.base import EmbeddingOutput, GenerationOutput, SamplingParams
from serving.engines.chat_template import TemplateError
from serving.loopback import keep_serve_grpc_on_loopback
from serving.protocol import ApiError
from serving.stall import ProgressWatch, StallGuard, wedge_hook
from serving.token_clock import TokenClock
from serving.vllm_dtype import cpu_flags, vllm_dtype

logger = logging.getLogger("ray.serve.quantserve.replica")
STATE_INTERVAL_SECONDS = 1.0
STALL_TIMEOUT_SECONDS = 120.0  # server.limits.stall_timeout_s's default, for replicas made outside the builder
EMBEDDING_BATCH_TOKENS = 8192  # server.limits.embedding_batch_tokens's default


@dataclass(frozen=True)
class GenerationRequest:
    """What the router sends a text replica for one choice of a chat or text completion."""

    request_id: str
    params: SamplingParams
    prompt: str | None = None  # a text completion's prompt, or
    messages: list[dict] | None = None  # a chat's messages ({"role", "content"}), rendered with the model's template
    max_prompt_tokens: int | None = None  # server.limits.max_prompt_tokens


@dataclass(frozen=True)
class GenerationResult:
    """A choice's whole output, for a non-streaming request, and when its tokens came: seconds from the call's
    arrival at the replica to the first token, and the gaps between later ones (the router's metrics)."""

    output: GenerationOutput
    first_token_seconds: float | None
    token_gaps: list[float]


class ReplicaMetrics:
    """Replica-level gauges and counters, refreshed from the engine's stats once a second."""

    def __init__(self, variant: ServedVariant) -> None:
        from serving.metrics import QuantserveMetrics, ReplicaLabels

        replica_id = str(os.getpid())
        with contextlib.suppress(Exception):  # outside Ray Serve (tests, benchmarks) there is no context
            replica_id = serve.get_replica_context().replica_id.unique_id
        self.metrics = QuantserveMetrics()
        self.labels = ReplicaLabels(variant.model, variant.variant, variant.backend, replica_id)
        self.metrics.replica_started(self.labels, variant.price_per_hour)
        self.last_tokens, self.last_busy = 0, 0.0

    def refresh(self, stats) -> None:
        """Publish the engine's counters as increments since the last refresh."""
        slot_use = stats.cache_use_ratio if stats.cache_use_ratio is not None else stats.running / max(stats.slots, 1)
        self.metrics.record_replica_state(self.labels, running=stats.running, waiting=stats.waiting,
                                          slot_use_ratio=slot_use)
        tokens, busy = stats.generated_tokens_total - self.last_tokens, stats.busy_seconds_total - self.last_busy
        self.last_tokens, self.last_busy = stats.generated_tokens_total, stats.busy_seconds_total
        if tokens or busy:
            self.metrics.record_replica_step(self.labels, generated_tokens=tokens, step_seconds=busy)

    def first_output(self, template_seconds: float, output: GenerationOutput) -> None:
        """A request's first output: the parts of its time to first token, and its prefix-cache lookup."""
        self.metrics.record_first_token_parts(self.labels, {
            "template_tokenize": template_seconds, "queue": output.queue_seconds, "prefill": output.prefill_seconds,
            "first_sample": output.first_sample_seconds})
        if output.cached_tokens is not None:
            self.metrics.record_prefix_cache(self.labels, output.prompt_tokens, output.cached_tokens)


class TextReplicaBase:
    """Shared request handling; subclasses set `self.engine` (see serving.engines.base.TextEngine). `settings`:
    what the builder passes from the server section (serving.app.replica_settings)."""

    def __init__(self, variant: dict, settings: dict | None = None) -> None:
        keep_serve_grpc_on_loopback()
        self.variant = ServedVariant.from_dict(variant)
        self.settings = settings or {}
        self._state_task: asyncio.Task | None = None
        self.engine = self.make_engine(self.variant)
        self.metrics = ReplicaMetrics(self.variant)

    def make_engine(self, variant: ServedVariant):
        raise NotImplementedError

    def _ensure_state_task(self) -> None:
        if self._state_task is None:
            self._state_task = asyncio.get_running_loop().create_task(self._publish_state())

    async def _publish_state(self) -> None:
        while True:
            self.metrics.refresh(self.engine.stats())
            await asyncio.sleep(STATE_INTERVAL_SECONDS)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            prompt_ids = self.engine.encode(self.engine.render_chat(request.messages))
        else:
            prompt_ids = self.engine.encode(request.prompt)
        limit = request.max_prompt_tokens
        if limit is not None and len(prompt_ids) > limit:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; this server allows at most {limit} "
                                "(server.limits.max_prompt_tokens)", param="messages", code="limit_exceeded")
        return prompt_ids

    def _outputs(self, request_id: str, prompt_ids: list[int], params) -> AsyncIterator[GenerationOutput]:
        return self.engine.generate(request_id, prompt_ids, params)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput | ApiError]:
        """The engine's outputs as they come; a refusal or a failure is an `ApiError`, the last item."""
        self._ensure_state_task()
        try:
            started = time.monotonic()
            prompt_ids = self._prompt_ids(request)
            template_seconds, first = time.monotonic() - started, True
            async for output in self._outputs(request.request_id, prompt_ids, request.params):
                if first:
                    self.metrics.first_output(template_seconds, output)
                    first = False
                yield output
        except ApiError as exc:
            if exc.param == "messages" and request.messages is None:  # the engine sees tokens; this was a text prompt
                exc = ApiError(exc.status, exc.message, "prompt", exc.code, exc.headers)
            yield exc
        except TemplateError as exc:
            yield ApiError(400, str(exc), param="messages")

    async def complete(self, request: GenerationRequest) -> GenerationResult | ApiError:
        """`generate`'s outputs merged into one, with their timing; or its `ApiError`."""
        clock, merged = TokenClock(), None
        async with contextlib.aclosing(self.generate(request)) as outputs:  # a cancelled call aborts the request
            async for output in outputs:
                if isinstance(output, ApiError):
                    return output
                clock.observe(output)
                merged = output if merged is None else merged.followed_by(output)
        if merged is None:
            return ApiError(502, "the engine ended the request without an output", code="replica_error")
        return GenerationResult(merged, clock.first_token_seconds, clock.gaps)

    async def stats(self) -> dict:
        self._ensure_state_task()
        return asdict(self.engine.stats())

    async def facts(self) -> dict:
        """What does not change while the replica runs, for /v1/models."""
        return {"backend": self.variant.backend}

    async def check_health(self) -> None:
        if not self.engine.stats().ready:
            raise RuntimeError("engine not ready")

    def __del__(self) -> None:
        from serving.metrics import mark_process_dead

        if self._state_task is not None:
            self._state_task.cancel()
        self.engine.shutdown()
        mark_process_dead()


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
class VllmTextReplica(TextReplicaBase):
    """vLLM's engine in the replica process. Serve routes nothing to it until `__init__` (engine start and a
    warm-up request, a minute or more on CPU) has returned, so /ready shows the variant not ready until then."""

    async def __init__(self, variant: dict, settings: dict | None = None) -> None:
        super().__init__(variant, settings)
        logger.info("starting vLLM for %s from %s in %s", self.variant.id, self.variant.folder, self.dtype)
        started = time.monotonic()
        await self.engine.start()
        logger.info("vLLM for %s ready in %.0f s", self.variant.id, time.monotonic() - started)

    def make_engine(self, variant: ServedVariant):
        import torch  # vLLM's own dependency: present wherever this replica runs

        from serving.engines.vllm_engine import VllmEngine, VllmEngineConfig

        config = VllmEngineConfig.from_variant(variant)
        self.dtype = vllm_dtype(config.dtype, torch.cuda.is_available(), cpu_flags())
        return VllmEngine(replace(config, dtype=self.dtype))

    async def facts(self) -> dict:
        return {**await super().facts(), "dtype": self.dtype, "configured_dtype": self.variant.vllm.get("dtype")}


@serve.deployment(health_check_period_s=5)
class OnnxTextReplica(TextReplicaBase):
    """The ONNX engine, watched: a model thread without progress for `stall_timeout_s` while requests wait fails the
    health check, ends its requests with a 503 and refuses new ones (serving.stall), so Serve replaces it."""

    def make_engine(self, variant: ServedVariant):
        from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig

        logger.info("loading %s from %s", variant.id, variant.folder)
        # Serve sends a replica at most max_batch_size requests (its max_ongoing_requests, see serving.app); the
        # variant's max_queue waits at the router's handle, so the engine's own queue only holds what is admitted.
        engine = OnnxEngine(replace(OnnxEngineConfig.from_variant(variant), max_queue=variant.max_batch_size))
        engine.batcher.fault_hook = wedge_hook(variant.id, engine.prompts.tokenizer)
        self.watch = ProgressWatch(self.settings.get("stall_timeout_s", STALL_TIMEOUT_SECONDS))
        self.guard = StallGuard()
        return engine

    def _outputs(self, request_id: str, prompt_ids: list[int], params) -> AsyncIterator[GenerationOutput]:
        if self.guard.reason:
            raise self.guard.error()
        return self.guard.guarded(self.engine.generate(request_id, prompt_ids, params))

    async def check_health(self) -> None:
        self.watch.observe(self.engine.stats())
        stalled = self.watch.stalled_for()
        if stalled is not None:
            reason = f"no progress for {stalled:.0f} s with {self.watch.waiting} requests waiting"
            logger.error("the model thread of %s is stuck: %s", self.variant.id, reason)
            self.guard.trip(reason)
            raise RuntimeError(f"the model thread is stuck: {reason}")


@serve.deployment(max_ongoing_requests=256, health_check_period_s=5)
class EmbeddingReplica:
    """Sentence embeddings, in forward passes bounded by tokens across requests (serving.embedding_batcher)."""

    def __init__(self, variant: dict, settings: dict | None = None) -> None:
        # onnxruntime is heavy: the router, which imports this module, never loads it
        from serving.embedding_batcher import EmbeddingBatcher
        from serving.engines.onnx_embedder import OnnxEmbedder

        keep_serve_grpc_on_loopback()
        self.variant = ServedVariant.from_dict(variant)
        self.embedder = OnnxEmbedder(Path(self.variant.folder), threads=self.variant.threads)
        self.batcher = EmbeddingBatcher(self.embedder, (settings or {}).get("embedding_batch_tokens",
                                                                            EMBEDDING_BATCH_TOKENS))

    async def embed(self, texts: list[str], truncate_prompt_tokens: int | None = None) -> EmbeddingOutput | ApiError:
        """The vectors of `texts`, or the ApiError refusing them (an input past the window)."""
        try:
            inputs = self.batcher.encode(texts, truncate_prompt_tokens)
        except ApiError as exc:
            return exc
        vectors = await self.batcher.embed(inputs)
        return EmbeddingOutput(vectors=vectors, tokens=[len(ids) for ids in inputs])

    async def stats(self) -> dict:
        return {"running": 0, "waiting": len(self.batcher.queue), "slots": 1, "ready": True,
                "dimensions": self.embedder.dimensions}

    async def facts(self) -> dict:
        return {"backend": self.variant.backend, "dimensions": self.embedder.dimensions,
                "window": self.batcher.window, "batch_tokens": self.batcher.batch_tokens}

    def check_health(self) -> None:
        return None
