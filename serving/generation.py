"""One chat or text completion as the router sees it: the variant that answers, its choices, its record.

The variant is chosen before any byte is sent: the first output of each choice is awaited, so a refusal (prompt
too long, replica overloaded) still becomes a proper HTTP error, and an overloaded variant hands the request to
its fallback (serving.dispatch.FallbackChain). After that, the outputs of the `n` choices stream through as they
arrive (ChoiceStreams), and the request is recorded once when they end (serving.request_meter.RequestMeter).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import replace

from quantserve.config import LimitsConfig
from serving import protocol as p
from serving.dispatch import REPLICA_GONE, FallbackChain, VariantState
from serving.engines.base import GenerationOutput, SamplingParams
from serving.replicas import GenerationRequest
from serving.request_meter import RequestMeter, recorded_status
from serving.responses import ChunkWriter, chat_response, completion_response, error_event

logger = logging.getLogger("ray.serve.quantserve.router")
REPLICA_FAILED = 502


class Deadline:
    """The request's timeout (server.limits.request_timeout_s): every wait of the request ends by it, with a 504."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s, self.at = timeout_s, time.monotonic() + timeout_s

    async def wait(self, awaitable: Awaitable):
        try:
            return await asyncio.wait_for(awaitable, max(self.at - time.monotonic(), 0.001))
        except TimeoutError:
            raise p.ApiError(504, f"the request did not finish within {self.timeout_s:g} s (server.limits."
                                  "request_timeout_s)", code="timeout") from None


class ChoiceStreams:
    """The `n` choices of a request on one variant, one replica stream each, read as one stream of (choice index,
    output). `merged` holds each choice's outputs so far as one."""

    def __init__(self, answered: VariantState, streams: list, firsts: list[GenerationOutput],
                 deadline: Deadline) -> None:
        self.answered, self.streams, self.firsts, self.deadline = answered, streams, firsts, deadline
        self.merged: dict[int, GenerationOutput] = {}

    @classmethod
    async def open(cls, candidate: VariantState, requests: list[GenerationRequest],
                   deadline: Deadline) -> ChoiceStreams:
        """Start every choice on `candidate` and await its first output; a refusal is raised (an ApiError)."""
        streams = [candidate.handle.options(stream=True).generate.remote(request) for request in requests]
        try:
            firsts = await deadline.wait(asyncio.gather(*(anext(stream) for stream in streams)))
            for first in firsts:
                if isinstance(first, p.ApiError):
                    raise first
        except BaseException:
            _cancel(streams)
            raise
        return cls(candidate, streams, firsts, deadline)

    async def outputs(self) -> AsyncIterator[tuple[int, GenerationOutput]]:
        """Outputs as they come, across all choices; an ApiError when a choice fails (502 when its replica died)
        or at the deadline (504). Leaving early cancels the streams: the replicas abort and free the slots."""
        queue: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(index, stream, first, queue))
                 for index, (stream, first) in enumerate(zip(self.streams, self.firsts, strict=True))]
        try:
            remaining = len(pumps)
            while remaining:
                index, output = await self.deadline.wait(queue.get())
                if output is None:
                    remaining -= 1
                    continue
                if isinstance(output, p.ApiError):
                    raise output
                self.merged[index] = self.merged[index].followed_by(output) if index in self.merged else output
                yield index, output
        except BaseException:
            _cancel(self.streams)
            raise
        finally:
            for pump in pumps:
                pump.cancel()

    async def _pump(self, index: int, stream, first: GenerationOutput, queue: asyncio.Queue) -> None:
        await queue.put((index, first))
        try:
            async for output in stream:
                await queue.put((index, output))
        except Exception as exc:  # the replica died (or raised) mid-generation: end the request now, not at timeout
            logger.warning("variant %s failed while generating: %s", self.answered.variant.id, exc)
            if isinstance(exc, REPLICA_GONE):
                self.answered.mark_gone()
            await queue.put((index, p.ApiError(REPLICA_FAILED, "the replica serving this request failed; retry it",
                                               code="replica_failed")))
        await queue.put((index, None))


def _cancel(streams: list) -> None:
    for stream in streams:
        stream.cancel()


class Generation:
    """One chat or text completion: the variant that answers (FallbackChain), its `n` choices (ChoiceStreams), and
    its one record (RequestMeter), made when the outputs end or fail."""

    def __init__(self, chain: FallbackChain, body: p.ChatCompletionRequest | p.CompletionRequest,
                 meter: RequestMeter, limits: LimitsConfig) -> None:
        self.chain, self.body, self.meter = chain, body, meter
        self.chat = isinstance(body, p.ChatCompletionRequest)
        self.request_id = p.new_id("chatcmpl" if self.chat else "cmpl")
        self.max_prompt_tokens = limits.max_prompt_tokens
        self.deadline = Deadline(limits.request_timeout_s)
        self.choices: ChoiceStreams | None = None

    async def start(self) -> VariantState:
        """The variant that answers, once every choice has its first output; a refusal is raised (an ApiError)."""
        try:
            self.choices = await self.chain.first_answer(self._open)
        except BaseException as exc:
            self._finish(exc)
            raise
        return self.choices.answered

    def _open(self, candidate: VariantState) -> Awaitable[ChoiceStreams]:
        return ChoiceStreams.open(candidate, [self._request(index) for index in range(self.body.n)], self.deadline)

    def _request(self, index: int) -> GenerationRequest:
        params = SamplingParams.from_dict(self.body.to_sampling_params())
        if params.seed is not None and index:
            params = replace(params, seed=params.seed + index)  # n choices from one seed: reproducible, yet different
        request_id = f"{self.request_id}-{index}-{uuid.uuid4().hex[:6]}"
        if self.chat:
            messages = self.body.constraints.messages([m.for_template() for m in self.body.messages])
            return GenerationRequest(request_id, params, messages=messages, max_prompt_tokens=self.max_prompt_tokens)
        return GenerationRequest(request_id, params, prompt=self.body.prompt_text(),
                                 max_prompt_tokens=self.max_prompt_tokens)

    async def outputs(self) -> AsyncIterator[tuple[int, GenerationOutput]]:
        """(choice index, output) as they come. The request is recorded when they end: 200, or the status of the
        failure, which is raised on (an ApiError for the caller to answer)."""
        try:
            async with aclosing(self.choices.outputs()) as outputs:
                async for index, output in outputs:
                    self.meter.observe(output)
                    yield index, output
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(None)

    def close(self) -> None:
        """For a reader that left before reading the outputs (a client gone at once): cancel them, record 499."""
        if self.meter.finished:
            return
        if self.choices is not None:
            _cancel(self.choices.streams)
        self._finish(asyncio.CancelledError())

    def merged_outputs(self) -> list[GenerationOutput]:
        """Each choice's outputs as one, in choice order."""
        return [self.choices.merged[index] for index in sorted(self.choices.merged)]

    def _finish(self, failure: BaseException | None) -> None:
        outputs = self.merged_outputs() if self.choices else []
        first = self.choices.firsts[0] if self.choices else None
        self.meter.finish(recorded_status(failure), self.chain.current.variant,
                          prompt_tokens=first.prompt_tokens if first else 0,
                          generated_tokens=sum(o.completion_tokens for o in outputs),
                          replica_seconds=sum(o.replica_seconds for o in outputs),
                          queue_seconds=first.queue_seconds if first else None)


async def full_response(generation: Generation) -> p.ChatCompletionResponse | p.CompletionResponse:
    """The whole response as one JSON object; a failure is raised (the router answers it)."""
    async with aclosing(generation.outputs()) as outputs:
        async for _ in outputs:
            pass
    body, outputs = generation.body, generation.merged_outputs()
    if generation.chat:
        return chat_response(generation.request_id, body.model, outputs, body.constraints)
    return completion_response(generation.request_id, body.model, outputs, *_completion_extras(body))


def _completion_extras(body: p.CompletionRequest) -> tuple[str | None, bool]:
    """The prompt to echo (None: no echo) and whether logprobs were asked for."""
    return body.prompt_text() if body.echo else None, body.logprobs is not None


async def stream_body(generation: Generation) -> AsyncIterator[bytes]:
    """The SSE body: role chunks, one chunk per output (a completion's first one echoes the prompt when asked),
    usage when asked for, [DONE]."""
    body = generation.body
    extras = (None, False, body.constraints) if generation.chat else _completion_extras(body)
    writer = ChunkWriter(generation.request_id, body.model, generation.chat, body.include_usage(), *extras)
    try:
        for chunk in writer.first(body.n):
            yield chunk
        try:
            async with aclosing(generation.outputs()) as outputs:
                async for index, output in outputs:
                    yield writer.chunk(index, output)
        except p.ApiError as exc:  # headers are sent: the error travels as an event, as OpenAI's API does
            yield error_event(exc)
        for chunk in writer.last():
            yield chunk
    finally:
        generation.close()
