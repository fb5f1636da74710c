"""One chat or text completion as the router sees it: pick a variant, stream from its replica, measure.

The variant is chosen before any byte is sent: the first output of each choice is awaited, so a
refusal (prompt too long, replica overloaded) still becomes a proper HTTP error, and an overloaded
variant hands the request to its fallback. After that, outputs stream through as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from serving import protocol as p
from quantserve.config import LimitsConfig
from serving.dispatch import REPLICA_BUSY, REPLICA_GONE, RETRY_AFTER_SECONDS, VariantDirectory, VariantState
from serving.metrics import QuantserveMetrics, RequestLabels
from serving.responses import ChunkWriter, chat_response, completion_response, sse

logger = logging.getLogger("ray.serve.quantserve.router")
CLIENT_CLOSED = 499
REPLICA_FAILED = 502


class Generation:
    def __init__(self, directory: VariantDirectory, state: VariantState, body, prompt: dict, chat: bool,
                 endpoint: str, metrics: QuantserveMetrics, limits: LimitsConfig,
                 charge: Callable[[int], None] | None = None) -> None:
        """`charge` receives the request's total tokens once it has finished (the rate limiter's token count)."""
        self.directory, self.state, self.body, self.prompt, self.chat = directory, state, body, prompt, chat
        self.endpoint, self.metrics, self.charge = endpoint, metrics, charge
        self.max_prompt_tokens = limits.max_prompt_tokens
        self.request_id = p.new_id("chatcmpl" if chat else "cmpl")
        self.arrival = time.monotonic()
        self.timeout, self.deadline = limits.request_timeout_s, self.arrival + limits.request_timeout_s
        self.answered: VariantState | None = None
        self.streams: list = []
        self.firsts: list[dict] = []
        self.first_token_at: float | None = None
        self.token_gaps: list[float] = []
        self.last_token_at = self.arrival
        self.final: dict[int, dict] = {}
        variant = state.variant
        self._in_flight = metrics.request_in_flight(RequestLabels(variant.model, variant.variant, variant.backend,
                                                                  endpoint))
        self._in_flight.__enter__()  # left in record(), once the response is complete (or failed)
        self._recorded = False

    # --- choosing the variant -------------------------------------------------------------------------

    async def start(self) -> VariantState:
        refusal = None
        try:
            candidates = self.directory.candidates(self.state)
        except p.ApiError as exc:
            self.record(exc.status, self.state)
            raise
        for candidate in candidates:
            streams = [self._call(candidate, index) for index in range(self.body.n)]
            try:
                self.streams = streams
                firsts = await self._before_deadline(asyncio.gather(*(anext(stream) for stream in streams)))
            except p.ApiError as exc:
                self.record(exc.status, candidate)
                raise
            except REPLICA_GONE + REPLICA_BUSY as exc:  # the next variant may answer
                logger.warning("variant %s failed before its first output: %s", candidate.variant.id, exc)
                self._cancel(streams)
                candidate.ready = candidate.ready and isinstance(exc, REPLICA_BUSY)
                continue
            except Exception:  # the replica raised on this request: a bug to report, not a replica to avoid
                logger.exception("variant %s raised on %s", candidate.variant.id, self.request_id)
                self._cancel(streams)
                self.record(500, candidate)
                raise p.ApiError(500, "the replica failed on this request; see its log", code="replica_error") \
                    from None
            errors = [first["error"] for first in firsts if "error" in first]
            if not errors:
                self.answered, self.streams, self.firsts = candidate, streams, firsts
                return candidate
            self._cancel(streams)
            refusal = errors[0]
            if refusal["status"] != 503:
                self.record(refusal["status"], candidate)
                raise p.ApiError(refusal["status"], refusal["message"], refusal["param"], refusal["code"])
        self.record(503, self.state)
        message = refusal["message"] if refusal else f"No healthy replica for `{self.state.variant.id}`"
        raise p.ApiError(503, message, code="overloaded" if refusal else "no_healthy_replica",
                         headers={"Retry-After": RETRY_AFTER_SECONDS})

    def _call(self, candidate: VariantState, index: int):
        params = self.body.to_sampling_params()
        if params["seed"] is not None and index:
            params["seed"] += index  # n choices from one seed: reproducible, yet different
        request = {"request_id": f"{self.request_id}-{index}-{uuid.uuid4().hex[:6]}", **self.prompt,
                   "params": params, "max_prompt_tokens": self.max_prompt_tokens}
        return candidate.handle.options(stream=True).generate.remote(request)

    @staticmethod
    def _cancel(streams: list) -> None:
        for stream in streams:
            stream.cancel()

    # --- consuming outputs ----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[tuple[int, dict]]:
        """(choice index, output) as they come, across all choices; a 504 ApiError past the request timeout."""
        queue: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(i, s, f, queue))
                 for i, (s, f) in enumerate(zip(self.streams, self.firsts, strict=True))]
        try:
            remaining = len(pumps)
            while remaining:
                index, output = await self._before_deadline(queue.get())
                if output is None:
                    remaining -= 1
                    continue
                yield index, self._observe(output)
        finally:
            for pump in pumps:
                pump.cancel()

    async def _before_deadline(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, max(self.deadline - time.monotonic(), 0.001))
        except TimeoutError:
            self._cancel(self.streams)  # the replicas abort the requests and free their slots
            raise p.ApiError(504, f"the request did not finish within {self.timeout:g} s (server.limits."
                                  "request_timeout_s)", code="timeout") from None

    async def _pump(self, index: int, stream, first: dict, queue: asyncio.Queue) -> None:
        await queue.put((index, first))
        try:
            async for output in stream:
                await queue.put((index, output))
        except Exception as exc:  # the replica died (or raised) mid-generation: end the request now, not at timeout
            logger.warning("variant %s failed while generating %s: %s", self.answered.variant.id, self.request_id,
                           exc)
            self.answered.ready = self.answered.ready and not isinstance(exc, REPLICA_GONE)
            await queue.put((index, {"error": {"status": REPLICA_FAILED, "message": "the replica serving this "
                                               "request failed; retry it", "param": None, "code": "replica_failed"}}))
        await queue.put((index, None))

    def _observe(self, output: dict) -> dict:
        if "error" in output:
            return output
        now, tokens = time.monotonic(), len(output["token_ids"])
        if self.first_token_at is None:
            self.first_token_at = now
            tokens -= 1
        elif tokens:
            self.token_gaps.extend([(now - self.last_token_at) / tokens] * tokens)
        self.last_token_at = now
        return output

    async def full_response(self):
        outputs: dict[int, dict] = {}
        try:
            async for index, output in self.events():
                if "error" in output:
                    raise p.ApiError(output["error"]["status"], output["error"]["message"],
                                     code=output["error"].get("code"))
                outputs[index] = _merge(outputs.get(index), output)
        except BaseException as exc:
            self.finish_on_exception(exc)
            raise
        self.final = outputs
        self.record(200, self.answered)
        ordered = [outputs[i] for i in sorted(outputs)]
        model = self.body.model
        if self.chat:
            return chat_response(self.request_id, model, ordered)
        echo = self.prompt["prompt"] if self.body.echo else ""
        return completion_response(self.request_id, model, ordered, echo)

    def finish_on_exception(self, exc: BaseException) -> None:
        self._cancel(self.streams)
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.record(CLIENT_CLOSED, self.answered)
        elif isinstance(exc, p.ApiError):
            self.record(exc.status, self.answered)
        else:
            self.record(500, self.answered)

    # --- metrics --------------------------------------------------------------------------------------

    def record(self, status: int, state: VariantState | None) -> None:
        """The request's metrics, once, when its response is complete or has failed."""
        if self._recorded:
            return
        self._recorded = True
        self._in_flight.__exit__(None, None, None)
        variant = (state or self.state).variant
        labels = RequestLabels(variant.model, variant.variant, variant.backend, self.endpoint)
        outputs = list(self.final.values())
        first = self.firsts[0] if self.firsts and "error" not in self.firsts[0] else {}
        prompt_tokens, generated = first.get("prompt_tokens", 0), sum(o["completion_tokens"] for o in outputs)
        self.metrics.record_request(
            labels, status_code=status, e2e_seconds=time.monotonic() - self.arrival,
            ttft_seconds=(self.first_token_at - self.arrival) if self.first_token_at else None,
            inter_token_seconds=self.token_gaps, queue_wait_seconds=first.get("queue_seconds"),
            prompt_tokens=prompt_tokens, generated_tokens=generated,
            replica_seconds=sum(o["replica_seconds"] for o in outputs), price_per_hour=variant.price_per_hour,
        )
        if self.charge is not None:
            self.charge(prompt_tokens + generated)  # as the response's usage counts them


def _merge(previous: dict | None, output: dict) -> dict:
    if previous is None:
        return dict(output)
    merged = dict(output)
    merged["text"] = previous["text"] + output["text"]
    merged["token_ids"] = previous["token_ids"] + output["token_ids"]
    merged["logprobs"] = previous["logprobs"] + output["logprobs"]
    return merged


async def stream_body(generation: Generation) -> AsyncIterator[bytes]:
    """The SSE body: role chunks, one chunk per output, usage when asked for, [DONE]."""
    body = generation.body
    writer = ChunkWriter(generation.request_id, body.model, generation.chat, body.include_usage())
    outputs: dict[int, dict] = {}
    status = 200
    try:
        for chunk in writer.first(body.n):
            yield chunk
        try:
            async for index, output in generation.events():
                if "error" in output:
                    raise p.ApiError(output["error"]["status"], output["error"]["message"],
                                     code=output["error"].get("code"))
                outputs[index] = _merge(outputs.get(index), output)
                yield writer.chunk(index, output)
        except p.ApiError as exc:  # headers are sent: the error travels as an event, as OpenAI's API does
            status = exc.status
            yield sse(exc.body())
        for chunk in writer.last():
            yield chunk
    except BaseException as exc:
        generation.final = outputs
        generation.finish_on_exception(exc)
        raise
    generation.final = outputs
    generation.record(status, generation.answered)
