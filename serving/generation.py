"""One chat or text completion as the router sees it: the variant that answers, its choices, its record.

The variant is chosen before any byte is sent. A non-streaming request is one unary call per choice
(CompletedChoices): the replica returns the whole output. A streamed one awaits the first output of each choice,
so a refusal (prompt too long, replica overloaded) still becomes a proper HTTP error, then streams the rest as it
comes (ChoiceStreams), whatever piled up while the client read coalesced into one output (OutputBuffer). Either
way an overloaded variant hands the request to its fallback (serving.dispatch.FallbackChain), and the request is
recorded once when it ends (serving.request_meter.RequestMeter).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

from quantserve.config import LimitsConfig
from serving import protocol as p
from serving.dispatch import FallbackChain, VariantState
from serving.engines.base import GenerationOutput, SamplingParams
from serving.output_buffer import OutputBuffer
from serving.replicas import GenerationRequest, GenerationResult
from serving.request_meter import RequestMeter, recorded_status
from serving.responses import ChunkWriter, chat_response, completion_response, error_event
from serving.serve_state import SERVE_FAILURES
from serving.token_clock import TokenClock

logger = logging.getLogger("ray.serve.quantserve.router")
REPLICA_FAILED = 502


class Deadline:
    """The request's timeout (server.limits.request_timeout_s): every wait of the request ends by it, with a 504.
    One timer per request: `wait` for an awaitable, `on_expiry` for a stream."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s, self.at = timeout_s, time.monotonic() + timeout_s

    def error(self) -> p.ApiError:
        return p.ApiError(504, f"the request did not finish within {self.timeout_s:g} s (server.limits."
                               "request_timeout_s)", code="timeout")

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.001)

    async def wait(self, awaitable: Awaitable):
        try:
            async with asyncio.timeout(self.remaining()):
                return await awaitable
        except TimeoutError:
            raise self.error() from None

    def on_expiry(self, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Call `callback` at the deadline (cancel the handle to stop it)."""
        return asyncio.get_running_loop().call_later(self.remaining(), callback)


@dataclass
class CompletedChoices:
    """The `n` choices of a non-streaming request on one variant: one unary call each, each output whole."""

    answered: VariantState
    merged: dict[int, GenerationOutput]

    @classmethod
    async def run(cls, candidate: VariantState, requests: list[GenerationRequest], deadline: Deadline,
                  clock: TokenClock) -> CompletedChoices:
        """Every choice on `candidate`; a refusal or a failure of any is raised (an ApiError, or the handle's)."""
        sent_at = time.monotonic()
        responses = [candidate.handle.complete.remote(request) for request in requests]
        try:
            results: list[GenerationResult | p.ApiError] = await deadline.wait(_results(responses))
        except BaseException:
            for response in responses:  # a timeout, a client gone, a failed choice: the replicas stop the others
                response.cancel()
            raise
        for result in results:
            if isinstance(result, p.ApiError):
                raise result
        for result in results:
            clock.merge(sent_at, result.first_token_seconds, result.token_gaps)
        return cls(candidate, {index: result.output for index, result in enumerate(results)})


async def _results(responses: list) -> list:
    return [await response for response in responses]  # sent together already; awaited in turn, no task each


class ChoiceStreams:
    """The `n` choices of a streamed request on one variant, one replica stream each, read as one stream of (choice
    index, output). `merged` holds each choice's outputs so far as one; `clock` times every output as it arrives."""

    def __init__(self, answered: VariantState, streams: list, firsts: list[GenerationOutput],
                 deadline: Deadline, clock: TokenClock) -> None:
        self.answered, self.streams, self.firsts, self.deadline, self.clock = answered, streams, firsts, deadline, clock
        self.merged: dict[int, GenerationOutput] = dict(enumerate(firsts))

    @classmethod
    async def open(cls, candidate: VariantState, requests: list[GenerationRequest], deadline: Deadline,
                   clock: TokenClock) -> ChoiceStreams:
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
        arrived = time.monotonic()
        for first in firsts:
            clock.observe(first, arrived)
        return cls(candidate, streams, firsts, deadline, clock)

    async def outputs(self) -> AsyncIterator[tuple[int, GenerationOutput]]:
        """Outputs as they come, across all choices, each choice's pending ones as one; an ApiError when a choice
        fails (502 when its replica died) or at the deadline (504). Leaving early cancels the streams: the replicas
        abort and free the slots."""
        buffer = OutputBuffer(len(self.streams))
        for index, first in enumerate(self.firsts):
            buffer.put(index, first)
        readers = [asyncio.create_task(self._read(index, stream, buffer)) for index, stream in enumerate(self.streams)]
        timer = self.deadline.on_expiry(lambda: buffer.fail(self.deadline.error()))
        try:
            while taken := await buffer.take():
                for index, output in taken:
                    yield index, output
        except BaseException:
            _cancel(self.streams)
            raise
        finally:
            timer.cancel()
            for reader in readers:
                reader.cancel()

    async def _read(self, index: int, stream, buffer: OutputBuffer) -> None:
        """One choice's replica stream into the buffer (one task per choice, for the whole stream)."""
        try:
            async for output in stream:
                if isinstance(output, p.ApiError):
                    buffer.fail(output)
                    return
                self.clock.observe(output)
                self.merged[index] = self.merged[index].followed_by(output)
                buffer.put(index, output)
        except Exception as exc:  # the replica died (or raised) mid-generation: end the request now, not at timeout
            logger.warning("variant %s failed while generating: %s", self.answered.variant.id, exc)
            if isinstance(exc, SERVE_FAILURES.gone):
                self.answered.mark_gone()
            buffer.fail(p.ApiError(REPLICA_FAILED, "the replica serving this request failed; retry it",
                                   code="replica_failed"))
            return
        buffer.end(index)


def _cancel(streams: list) -> None:
    for stream in streams:
        stream.cancel()


class Generation:
    """One chat or text completion: the variant that answers (FallbackChain), its `n` choices (CompletedChoices, or
    ChoiceStreams when streamed), and its one record (RequestMeter), made when the outputs end or fail."""

    def __init__(self, chain: FallbackChain, body: p.ChatCompletionRequest | p.CompletionRequest,
                 meter: RequestMeter, limits: LimitsConfig) -> None:
        self.chain, self.body, self.meter = chain, body, meter
        self.chat = isinstance(body, p.ChatCompletionRequest)
        self.request_id = p.new_id("chatcmpl" if self.chat else "cmpl")
        self.max_prompt_tokens = limits.max_prompt_tokens
        self.deadline = Deadline(limits.request_timeout_s)
        self.choices: CompletedChoices | ChoiceStreams | None = None

    async def start(self) -> VariantState:
        """The variant that answers: once every choice has its first output (streamed) or is complete (not, and
        then the request is recorded); a refusal is raised (an ApiError)."""
        try:
            self.choices = await self.chain.first_answer(self._open if self.body.stream else self._complete)
        except BaseException as exc:
            self._finish(exc)
            raise
        if not self.body.stream:
            self._finish(None)
        return self.choices.answered

    def _open(self, candidate: VariantState) -> Awaitable[ChoiceStreams]:
        return ChoiceStreams.open(candidate, self._requests(), self.deadline, self.meter.clock)

    def _complete(self, candidate: VariantState) -> Awaitable[CompletedChoices]:
        return CompletedChoices.run(candidate, self._requests(), self.deadline, self.meter.clock)

    def _requests(self) -> list[GenerationRequest]:
        return [self._request(index) for index in range(self.body.n)]

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
        """A streamed request's (choice index, output) as they come. The request is recorded when they end: 200, or
        the status of the failure, which is raised on (an ApiError for the caller to answer)."""
        try:
            async with aclosing(self.choices.outputs()) as outputs:
                async for index, output in outputs:
                    yield index, output
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(None)

    def close(self) -> None:
        """For a reader that left before reading the outputs (a client gone at once): cancel them, record 499."""
        if self.meter.finished:
            return
        if isinstance(self.choices, ChoiceStreams):
            _cancel(self.choices.streams)
        self._finish(asyncio.CancelledError())

    def merged_outputs(self) -> list[GenerationOutput]:
        """Each choice's outputs as one, in choice order."""
        return [self.choices.merged[index] for index in sorted(self.choices.merged)]

    def _finish(self, failure: BaseException | None) -> None:
        outputs = self.merged_outputs() if self.choices else []
        first = outputs[0] if outputs else None
        self.meter.finish(recorded_status(failure), self.chain.current.variant,
                          prompt_tokens=first.prompt_tokens if first else 0,
                          generated_tokens=sum(o.completion_tokens for o in outputs),
                          replica_seconds=sum(o.replica_seconds for o in outputs),
                          queue_seconds=first.queue_seconds if first else None)


def full_response(generation: Generation) -> p.ChatCompletionResponse | p.CompletionResponse:
    """A non-streaming request's whole response, once `start` has returned."""
    body, outputs = generation.body, generation.merged_outputs()
    if generation.chat:
        return chat_response(generation.request_id, body.model, outputs, body.constraints)
    return completion_response(generation.request_id, body.model, outputs, *_completion_extras(body))


def _completion_extras(body: p.CompletionRequest) -> tuple[str | None, bool]:
    """The prompt to echo (None: no echo) and whether logprobs were asked for."""
    return body.prompt_text() if body.echo else None, body.logprobs is not None


async def stream_body(generation: Generation) -> AsyncIterator[bytes]:
    """The SSE body: role chunks, one chunk per choice for what arrived since the last one (a completion's first
    one echoes the prompt when asked), usage when asked for, [DONE]."""
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
