"""`/v1/embeddings`: call the embedding variant (or its fallback) and shape OpenAI's response."""

from __future__ import annotations

import base64

import numpy as np

from serving import protocol as p
from serving.dispatch import FallbackChain, VariantState
from serving.engines.base import EmbeddingOutput
from serving.request_meter import RequestMeter, recorded_status


async def embedding_response(chain: FallbackChain, body: p.EmbeddingRequest,
                             meter: RequestMeter) -> tuple[p.EmbeddingResponse, VariantState]:
    """The response and the variant that answered; the request is recorded by `meter` either way."""
    try:
        result = await chain.first_answer(lambda candidate: candidate.handle.embed.remote(body.texts()))
        response = _shape(body, result)
    except BaseException as exc:
        meter.finish(recorded_status(exc), chain.current.variant)
        raise
    meter.finish(200, chain.current.variant, prompt_tokens=response.usage.prompt_tokens)
    return response, chain.current


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
