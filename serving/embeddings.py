"""`/v1/embeddings`: call the embedding variant (or its fallback) and shape OpenAI's response."""

from __future__ import annotations

import base64
import time

import numpy as np

from serving import protocol as p
from serving.dispatch import REPLICA_BUSY, REPLICA_GONE, VariantDirectory, VariantState
from serving.metrics import QuantserveMetrics, RequestLabels

ENDPOINT = "/v1/embeddings"


async def embedding_response(directory: VariantDirectory, state: VariantState, body: p.EmbeddingRequest,
                             metrics: QuantserveMetrics) -> tuple[p.EmbeddingResponse, VariantState]:
    started = time.monotonic()
    status, answered, result = 503, state, None
    try:
        for candidate in directory.candidates(state):
            try:
                result = await candidate.handle.embed.remote(body.texts())
            except REPLICA_GONE + REPLICA_BUSY as exc:  # the next candidate answers
                candidate.ready = candidate.ready and isinstance(exc, REPLICA_BUSY)
                continue
            answered = candidate
            break
        if result is None:
            raise p.ApiError(503, f"No healthy replica for `{state.variant.id}`", code="no_healthy_replica",
                             headers={"Retry-After": "2"})
        response = _shape(body, result)
        status = 200
        return response, answered
    except p.ApiError as exc:
        status = exc.status
        raise
    finally:
        variant = answered.variant
        tokens = sum(result["tokens"]) if result else 0
        metrics.record_request(RequestLabels(variant.model, variant.variant, variant.backend, ENDPOINT),
                               status_code=status, e2e_seconds=time.monotonic() - started, prompt_tokens=tokens)


def _shape(body: p.EmbeddingRequest, result: dict) -> p.EmbeddingResponse:
    vectors = np.asarray(result["vectors"], dtype=np.float32)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise p.ApiError(400, f"this model returns {vectors.shape[1]} dimensions; `dimensions` cannot change that",
                         param="dimensions", code="unsupported_dimensions")
    data = []
    for index, vector in enumerate(vectors):
        embedding = base64.b64encode(vector.tobytes()).decode() if body.encoding_format == "base64" else vector.tolist()
        data.append(p.EmbeddingData(index=index, embedding=embedding))
    tokens = sum(result["tokens"])
    return p.EmbeddingResponse(data=data, model=body.model,
                               usage=p.Usage(prompt_tokens=tokens, total_tokens=tokens))
