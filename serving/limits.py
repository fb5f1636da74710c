"""Per-request bounds from the config (`server.limits`): each violation is an OpenAI error naming the limit."""

from __future__ import annotations

from quantserve.config import LimitsConfig
from serving import protocol as p


def check_generation(body: p.ChatCompletionRequest | p.CompletionRequest, limits: LimitsConfig) -> None:
    requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
    param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    if requested is not None and requested > limits.max_tokens:
        raise p.ApiError(400, f"{param} is {requested}; this server allows at most {limits.max_tokens}",
                         param=param, code="limit_exceeded")
    if body.n > limits.max_n:
        raise p.ApiError(400, f"n is {body.n}; this server allows at most {limits.max_n}", param="n",
                         code="limit_exceeded")
    if len(body.stop or []) > limits.max_stop_strings:
        raise p.ApiError(400, f"{len(body.stop)} stop strings; this server allows at most {limits.max_stop_strings}",
                         param="stop", code="limit_exceeded")


def check_embedding(body: p.EmbeddingRequest, limits: LimitsConfig) -> None:
    count = len(body.texts())
    if count > limits.max_embedding_inputs:
        raise p.ApiError(400, f"{count} inputs; this server embeds at most {limits.max_embedding_inputs} per request",
                         param="input", code="limit_exceeded")


def check_body_size(content_length: str | None, limits: LimitsConfig) -> None:
    if content_length is not None and content_length.isdigit() and int(content_length) > limits.max_body_bytes:
        raise p.ApiError(413, f"the request body has {content_length} bytes; this server accepts at most "
                              f"{limits.max_body_bytes}", code="request_too_large")
