"""`/v1/embeddings`: call the embedding variant (or its fallback) within the request timeout and shape OpenAI's
response."""

from __future__ import annotations

import base64

import numpy as np

from serving import protocol as p
from serving.dispatch import FallbackChain, VariantState
from serving.engines.base import EmbeddingOutput
from serving.generation import Deadline
from serving.request_meter import RequestMeter, recorded_status


async def embedding_response(chain: FallbackChain, body: p.EmbeddingRequest, meter: RequestMeter,
                             deadline: Deadline) -> tuple[p.EmbeddingResponse, VariantState]:
    """The response and the variant that answered; the request is recorded by `meter` either way. Past the
    deadline it is a 504 and the replica drops what it had not embedded yet."""
    try:
        result = await deadline.wait(chain.first_answer(lambda candidate: _embed(candidate, body)))
        response = _shape(body, result)
    except BaseException as exc:
        meter.finish(recorded_status(exc), chain.current.variant)
        raise
    meter.finish(200, chain.current.variant, prompt_tokens=response.usage.prompt_tokens)
    return response, chain.current


async def _embed(candidate: VariantState, body: p.EmbeddingRequest) -> EmbeddingOutput:
    response = candidate.handle.embed.remote(body.texts(), body.truncate_prompt_tokens)
    try:
        result = await response
    except BaseException:
        response.cancel()  # a timeout or a client gone: the replica stops waiting for this request's passes
        raise
    if isinstance(result, p.ApiError):
        raise result
    return result


def _shape(body: p.EmbeddingRequest, result: EmbeddingOutput) -> p.EmbeddingResponse:
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise p.ApiError(400, f"this model returns {vectors.shape[1]} dimensions; `dimensions` cannot change that",
                         param="dimensions", code="unsupported_dimensions")
    data = []
    for index, vector in enumerate(vectors):
        embedding = base64.b64encode(vector.tobytes()).decode() if body.encoding_format == "base64" else vector.tolist()
        data.append(p.EmbeddingData(index=index, embedding=embedding))
    tokens = sum(result.tokens)
    return p.EmbeddingResponse(data=data, model=body.model,
                               usage=p.Usage(prompt_tokens=tokens, total_tokens=tokens))
