"""Turn one answered request into its record: HTTP status, the measured stream, usage checks, the SLO verdict.

No Locust import: the Locust users call these with their responses (anything with `status_code`, `headers`,
`json()`, `text`), and the times are `time.perf_counter()` seconds.
"""

from __future__ import annotations

import time

from loadtest.records import RequestRecord
from loadtest.sse import StreamResult, error_message, time_per_output_token_ms, usage_problem
from quantserve.constants import VARIANT_HEADER


def measure_stream(record: RequestRecord, result: StreamResult, due_s: float) -> None:
    """Fill the record from a parsed stream; TTFT and E2E count from `due_s`, when the request was due."""
    usage = result.usage or {}
    record.chunks, record.finish_reason = result.chunks, result.finish_reason
    record.prompt_tokens, record.output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    record.total_tokens = usage.get("total_tokens")
    record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    record.e2e_ms = (time.perf_counter() - due_s) * 1000
    if result.first_token_s is not None:
        record.ttft_ms = (result.first_token_s - due_s) * 1000
        record.tpot_ms = time_per_output_token_ms(result, record.output_tokens)
        record.itl_max_ms = max(result.gaps_ms, default=None)
        record.token_gaps_ms = list(result.gaps_ms)
    problem = usage_problem(result, record.max_tokens)
    record.usage_checked = not problem
    if result.error:
        record.error = f"stream error: {result.error}"
    elif not result.done:
        record.error = "stream ended before [DONE]"
    elif problem:
        record.error = f"usage: {problem}"
    record.ok = not record.error


def accepted(response, record: RequestRecord) -> bool:
    """Record the status and the answering variant; a non-200 is recorded as the request's error."""
    record.status = response.status_code or 0
    if record.status != 200:
        record.error = http_error(response)
        return False
    record.variant = response.headers.get(VARIANT_HEADER, "")
    return True


def read_embeddings(body: dict, record: RequestRecord) -> None:
    usage = body.get("usage") or {}
    record.prompt_tokens, record.total_tokens = usage.get("prompt_tokens"), usage.get("total_tokens")
    record.output_tokens = 0
    vectors = [item.get("embedding") for item in body.get("data") or []]
    record.usage_checked = isinstance(record.prompt_tokens, int)
    record.error = "" if len(vectors) == 1 and vectors[0] else f"expected 1 embedding, got {len(vectors)}"
    record.ok = not record.error


def http_error(response) -> str:
    """The server's own error message, or why no response came."""
    if not response.status_code:
        return f"no response: {getattr(response, 'error', None) or 'connection failed'}"[:300]
    try:
        return f"HTTP {response.status_code}: {error_message(response.json())}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


def slo_miss(record: RequestRecord, ttft_bound_ms: float, tpot_bound_ms: float) -> str:
    """Why the request missed its per-request SLO (0 means no bound), or "" when it met it."""
    if ttft_bound_ms and record.ttft_ms > ttft_bound_ms:
        return f"TTFT {record.ttft_ms:.0f} ms > {ttft_bound_ms:g} ms"
    if tpot_bound_ms and record.tpot_ms is not None and record.tpot_ms > tpot_bound_ms:
        return f"TPOT {record.tpot_ms:.1f} ms > {tpot_bound_ms:g} ms"
    return ""
